"""Class-conditional training, sampling with classifier-free guidance, and the asked-for-class accuracy."""

import functools
import json

import PIL.Image
import pytest
import torch
from helpers_train import make_parquet, make_png_folder, run_train, tiny_model_config, train_argv

from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler
from ddpmkit.commands import main

NAMES = {"0": "zero", "1": "one", "2": "Sneaker"}


def tiny_pipeline(**unet_kwargs) -> DDPMPipeline:
    torch.manual_seed(0)
    unet = ConvUNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, time_embedding_dim=8,
                           **unet_kwargs)  # fmt: skip
    pipe = DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def conditional():
    return tiny_pipeline(num_class_embeds=4, id2label=NAMES)


def _calls(pipe):
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, kwargs_out=None: calls.append(args[0].shape[0]))
    return calls


def test_guidance_is_one_batched_call_per_step_mixing_class_and_null(conditional):
    calls = _calls(conditional)
    run = dict(batch_size=3, num_inference_steps=4, output_type="pt")
    guided = conditional(generator=torch.manual_seed(0), class_labels=2, guidance_scale=3.0, **run).images
    assert calls == [6] * 4  # one forward of [class, null] halves per step, not two
    calls.clear()
    plain = conditional(generator=torch.manual_seed(0), class_labels="sneaker", guidance_scale=1.0, **run).images
    assert calls == [3] * 4
    calls.clear()
    default = conditional(generator=torch.manual_seed(0), class_labels=2, **run).images
    assert calls == [6] * 4  # guided at DEFAULT_GUIDANCE unless told otherwise
    assert torch.equal(default, conditional(generator=torch.manual_seed(0), class_labels=2, guidance_scale=1.5,
                                            **run).images)  # fmt: skip
    calls.clear()
    null = conditional(generator=torch.manual_seed(0), class_labels=3 * [0], guidance_scale=0.0, **run).images
    assert calls == [3] * 4  # scale 0 is the unconditional prediction alone: the null half only
    other = conditional(generator=torch.manual_seed(0), class_labels=[1, 2, 0], guidance_scale=0.0, **run).images
    assert torch.equal(null, other)  # whatever the labels
    assert not torch.allclose(guided, plain) and not torch.allclose(null, plain)

    # the guided prediction is eps_null + s * (eps_class - eps_null), by hand at the first step
    class Stop(Exception):
        pass

    captured = {}

    def step(model_output, timestep, sample, **kwargs):
        captured.update(out=model_output, t=timestep, x=sample)
        raise Stop

    conditional.scheduler.step = step
    with pytest.raises(Stop):
        conditional(batch_size=2, num_inference_steps=4, class_labels=[1, 2], guidance_scale=3.0,
                    generator=torch.manual_seed(1))  # fmt: skip
    x = captured["x"]
    with torch.no_grad():
        eps = conditional.unet(torch.cat([x, x]), captured["t"], class_labels=torch.tensor([1, 2, 3, 3])).sample
    assert torch.allclose(captured["out"], eps[2:] + 3.0 * (eps[:2] - eps[2:]), atol=1e-5)


def test_on_a_cpu_large_unet_calls_run_in_pieces_with_the_same_result(conditional, monkeypatch):
    import ddpmkit.pipelines.pipeline_ddpm as module

    run = dict(batch_size=5, num_inference_steps=2, output_type="pt", class_labels=[0, 1, 2, 0, 1])
    whole = conditional(generator=torch.manual_seed(0), **run).images
    monkeypatch.setattr(module, "CPU_UNET_PIECE", 4)
    calls = _calls(conditional)
    pieces = conditional(generator=torch.manual_seed(0), **run).images
    assert calls == [4, 4, 2] * 2  # the 10 images of the [class, null] halves, 4 at a time, at each step
    assert torch.allclose(pieces, whole, atol=1e-5)


def test_without_labels_each_image_draws_its_class_from_its_own_generator(conditional):
    seen = []
    conditional.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    run = dict(num_inference_steps=2, output_type="pt", guidance_scale=1.0)
    whole = conditional(batch_size=12, generator=[torch.Generator().manual_seed(i) for i in range(12)], **run).images
    labels = seen[0]
    assert all(0 <= c < 3 for c in labels) and len(set(labels)) == 3  # the classes, never the null class (3)
    seen.clear()
    tail = conditional(batch_size=4, generator=[torch.Generator().manual_seed(i) for i in range(8, 12)], **run).images
    assert seen[0] == labels[8:] and torch.allclose(tail, whole[8:], atol=1e-6)  # not on the batch
    seen.clear()
    conditional(batch_size=3, generator=torch.manual_seed(0), **{**run, "guidance_scale": 2.0})
    assert seen[0][3:] == [3, 3, 3] and all(c < 3 for c in seen[0][:3])  # guided: random classes, then the null


def test_a_list_of_labels_sets_the_batch_size(conditional):
    run = dict(num_inference_steps=2, output_type="pt", guidance_scale=1.0)
    assert conditional(class_labels=["Sneaker"] * 3, **run).images.shape[0] == 3  # the README's call
    assert conditional(class_labels=torch.tensor([0, 1]), **run).images.shape[0] == 2
    assert conditional(class_labels=1, **run).images.shape[0] == 1 and conditional(**run).images.shape[0] == 1
    with pytest.raises(ValueError, match="got 3 class labels for batch_size 2"):
        conditional(batch_size=2, class_labels=[0, 1, 2], **run)


def test_bad_labels_and_scales_are_one_clear_error(conditional):
    with pytest.raises(ValueError, match=r"class 'Boot' is not one this model draws.*2 'Sneaker'"):
        conditional(batch_size=1, num_inference_steps=2, class_labels="Boot")
    with pytest.raises(ValueError, match="must lie in"):
        conditional(batch_size=1, num_inference_steps=2, class_labels=torch.tensor([3]))  # the null class
    with pytest.raises(ValueError, match="guidance_scale must be a number"):
        conditional(batch_size=1, num_inference_steps=2, class_labels=1, guidance_scale=float("nan"))
    plain = tiny_pipeline()
    with pytest.raises(ValueError, match="unconditional, so it takes no class_labels"):
        plain(batch_size=1, num_inference_steps=2, class_labels=1)
    with pytest.raises(ValueError, match="guidance_scale 2.0 needs a UNet trained with a null class"):
        plain(batch_size=1, num_inference_steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="num_class_embeds must be 4 for 3 classes"):
        ConvUNet2DModel(sample_size=8, block_out_channels=(8,), norm_num_groups=4, time_embedding_dim=8,
                        num_class_embeds=3, id2label=NAMES)  # fmt: skip
    with pytest.raises(ValueError, match="id2label keys must be the ids"):
        ConvUNet2DModel(sample_size=8, block_out_channels=(8,), norm_num_groups=4, time_embedding_dim=8,
                        num_class_embeds=3, id2label={"1": "a", "2": "b"})  # fmt: skip


def test_a_conditional_folder_loads_safely_and_in_stock_diffusers(conditional, tmp_path):
    import diffusers

    conditional.save_pretrained(tmp_path / "cond")
    loaded = DDPMPipeline.from_pretrained(tmp_path / "cond")
    assert loaded.id2label == {0: "zero", 1: "one", 2: "Sneaker"} and loaded.get_label_ids(["one", 2]) == [1, 2]
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "cond")
    assert stock.unet.config.id2label == NAMES
    config = json.loads((tmp_path / "cond" / "unet" / "config.json").read_text())
    config["id2label"] = {"0": "x" * 101, "1": "one", "2": "two"}
    (tmp_path / "cond" / "unet" / "config.json").write_text(json.dumps(config))
    from ddpmkit import UnsafeFolderError

    with pytest.raises(UnsafeFolderError, match="id2label"):
        DDPMPipeline.from_pretrained(tmp_path / "cond")


def test_class_conditional_training_stores_the_class_names_and_samples_by_name(tmp_path, capsys):
    folder = make_png_folder(tmp_path / "images", n=12, mode="L", classes=["cat", "dog", "eel"])
    out = tmp_path / "out"
    argv = train_argv(folder, out, tiny_model_config(tmp_path), "--class_conditional", dataset=None,
                      train_data_files=None, train_data_dir=str(folder), max_train_steps=3)  # fmt: skip
    run_train(argv)
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "eel"} and config["num_class_embeds"] == 4
    grid = tmp_path / "grid.png"
    code = main(["sample", "--model", str(out), "--class", "all", "--num_images", "2", "--steps", "2", "--seed", "0",
                 "--out", str(grid), "--quiet"])  # fmt: skip
    assert code == 0
    image = PIL.Image.open(grid)
    assert image.height == 3 * 8 + 4 * 2 and image.width > 2 * 8 + 3 * 2  # a row per class, and a label margin
    assert main(["sample", "--model", str(out), "--class", "dog", "--num_images", "2", "--steps", "2",
                 "--out", str(tmp_path / "dog.png"), "--out_dir", str(tmp_path / "dogs"), "--quiet"]) == 0  # fmt: skip
    assert all("_class1_" in p.name for p in (tmp_path / "dogs").iterdir())
    capsys.readouterr()
    assert main(["sample", "--model", str(out), "--class", "fox", "--out", str(grid)]) == 2
    assert "--class class 'fox' is not one this model draws" in capsys.readouterr().err


def test_class_conditional_training_without_labels_names_the_flag(tmp_path):
    folder = make_png_folder(tmp_path / "flat", n=8, mode="L")  # no class sub-folders: no labels
    argv = train_argv(folder, tmp_path / "out", tiny_model_config(tmp_path), "--class_conditional", dataset=None,
                      train_data_files=None, train_data_dir=str(folder), max_train_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="--class_conditional needs labels.*--label_column"):
        run_train(argv)
    assert not (tmp_path / "out" / "unet").exists()


def test_unconditional_sample_refuses_class(tmp_path, capsys):
    tiny_pipeline().save_pretrained(tmp_path / "plain")
    assert main(["sample", "--model", str(tmp_path / "plain"), "--class", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "is not class-conditional" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "plain"), "--guidance_scale", "2",
                 "--out", str(tmp_path / "x.png")]) == 2  # fmt: skip
    assert "--guidance_scale: " in (err := capsys.readouterr().err) and "is not class-conditional" in err


def test_asked_for_class_accuracy(tmp_path):
    from ddpmkit.evaluation import evaluate_images
    from ddpmkit.evaluation.classifier import ImageClassifier

    data = tmp_path / "digits"
    make_parquet(data / "train.parquet", n=20)
    make_parquet(data / "test.parquet", n=10)
    torch.manual_seed(0)
    classifier = ImageClassifier(in_channels=1, sample_size=8, num_classes=10, block_out_channels=(4, 8),
                                 feature_dim=8).eval()  # fmt: skip
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    from ddpmkit.evaluation.features import ClassifierFeatures

    features = ClassifierFeatures(classifier)
    _, probabilities = features.classify(images)
    predicted = probabilities.argmax(1)
    results = evaluate_images(images, data, classifier=features, fid=False, class_labels=predicted.tolist())
    assert results["class_accuracy"] == 1.0
    wrong = ((predicted + 1) % 10).tolist()
    results = evaluate_images(images, data, classifier=features, fid=False, class_labels=wrong)
    assert results["class_accuracy"] == 0.0 and "class_accuracy_floor" in results


def test_guided_ddim_steps_with_the_noise_of_its_clipped_estimate(conditional):
    """DDIM clips x0 but steps with the unclipped noise by default; with guidance that mismatch ruined the samples
    (3% of guided MNIST 1s were read as 1s), so a guided call asks for the noise of the clipped estimate."""
    from diffusers import DDIMScheduler

    conditional.scheduler = DDIMScheduler.from_config(conditional.scheduler.config)
    seen = []
    real = conditional.scheduler.step
    @functools.wraps(real)  # the pipeline reads the signature
    def step(*args, **kwargs):
        seen.append(kwargs.get("use_clipped_model_output"))
        return real(*args, **kwargs)

    conditional.scheduler.step = step
    conditional(batch_size=2, num_inference_steps=2, class_labels=1, guidance_scale=2.0)
    assert seen == [True, True]
    seen.clear()
    conditional(batch_size=2, num_inference_steps=2, class_labels=1, guidance_scale=1.0)  # unguided: as diffusers
    assert seen == [None, None]

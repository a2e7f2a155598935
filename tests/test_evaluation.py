"""Evaluation: the Fréchet math on known Gaussians, the classifier, cached statistics, FID's offline behaviour,
and ``evaluate`` end to end on a tiny pipeline and a tiny Parquet dataset."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from ddpmkit.commands import main as evaluation_main
from ddpmkit.evaluation import (
    ClassifierFeatures,
    FeatureStatistics,
    FIDInceptionV3,
    ImageClassifier,
    LabelledImages,
    accuracy,
    bundled_classifier_path,
    dataset_statistics,
    evaluate_images,
    evaluate_pipeline,
    find_inception_weights,
    frechet_distance,
    generate_images,
    load_classifier,
    load_labelled_images,
    prediction_summary,
    random_subset,
    train_classifier,
)
from ddpmkit.evaluation.inception import resize_like_tensorflow1
from ddpmkit.pipelines.sampling import with_sampler as with_scheduler


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    # decoded images and dataset statistics go to a fresh cache, not the user's
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DDPMKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# ---------------------------------------------------------------- Fréchet distance on known Gaussians


def test_frechet_distance_one_dimension_is_mean_and_std_gap():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)


def test_frechet_distance_diagonal_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    m1, m2 = rng.normal(size=16), rng.normal(size=16)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_scaled_rotated_covariance():
    # S2 = c^2 S1 commutes with S1, so Tr((S1 S2)^1/2) = c Tr(S1) and d^2 = (1 - c)^2 Tr(S1)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    cov = q @ np.diag(rng.uniform(0.5, 2, 8)) @ q.T
    assert frechet_distance(np.zeros(8), cov, np.zeros(8), 9 * cov) == pytest.approx(4 * np.trace(cov), rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(2, 30), st.integers(0, 2**16))
def test_frechet_distance_is_zero_on_itself_symmetric_and_finite_when_singular(dim, n, seed):
    # n < dim gives singular covariances: the eigen route must still give a finite, non-negative value
    rng = np.random.default_rng(seed)
    a = FeatureStatistics.from_features(rng.normal(size=(n, dim)))
    b = FeatureStatistics.from_features(rng.normal(size=(n, dim)) * 2 + 1)
    assert frechet_distance(a.mean, a.cov, a.mean, a.cov) == pytest.approx(0, abs=1e-6 * (1 + np.trace(a.cov)))
    ab, ba = frechet_distance(a.mean, a.cov, b.mean, b.cov), frechet_distance(b.mean, b.cov, a.mean, a.cov)
    assert math.isfinite(ab) and ab > 0
    assert ab == pytest.approx(ba, rel=1e-6, abs=1e-9)


def test_frechet_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="cov2 has shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStatistics.from_features(np.zeros((1, 3)))


# ---------------------------------------------------------------- predictions: confidence and coverage


def test_prediction_summary_entropy_spans_zero_to_log_k():
    every_class = torch.eye(4).repeat(5, 1)  # each class predicted 5 times, with certainty
    summary = prediction_summary(every_class)
    assert summary["class_entropy"] == pytest.approx(math.log(4))
    assert summary["confidence"] == pytest.approx(1.0)
    one_class = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(6, 1)
    summary = prediction_summary(one_class)
    assert summary["class_entropy"] == 0
    assert summary["confidence"] == pytest.approx(0.7)
    assert summary["class_histogram"] == [1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------- a tiny labelled Parquet dataset


def _pattern(label: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """Class 0: a bright left half; class 1: a bright right half; class 2: a bright centre square; plus noise."""
    image = rng.integers(0, 60, (size, size))
    half = size // 2
    if label == 0:
        image[:, :half] += 180
    elif label == 1:
        image[:, half:] += 180
    else:
        image[size // 4 : -size // 4, size // 4 : -size // 4] += 180
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from datasets import ClassLabel, Dataset, Features, Image

    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=["left", "right", "centre"])})
    for split, count in (("train", 90), ("test", 30)):
        labels = [i % 3 for i in range(count)]
        images = [PIL.Image.fromarray(_pattern(label, rng), mode="L") for label in labels]
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(root / f"{split}.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_classifier(tiny_dataset):
    torch.manual_seed(0)
    train = load_labelled_images(tiny_dataset, "train", 8)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return train_classifier(
            train.images,
            train.labels,
            epochs=30,
            batch_size=16,
            learning_rate=5e-3,
            log_every=0,
            block_out_channels=(4, 8),
            feature_dim=8,
        )


def test_load_labelled_images_resizes_and_reads_labels(tiny_dataset):
    data = load_labelled_images(tiny_dataset, "test", 8, max_samples=7)
    assert data.images.shape == (7, 1, 8, 8) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert data.name.startswith(f"{tiny_dataset.name}-test-")
    # the bright half survives the resize
    assert data.images[0, 0, :, :4].mean() > data.images[0, 0, :, 4:].mean() + 100
    rgb = load_labelled_images(tiny_dataset / "test.parquet", "test", 16, channels=3, max_samples=2)
    assert rgb.images.shape == (2, 3, 16, 16)


def test_load_labelled_images_names_the_missing_split(tiny_dataset):
    with pytest.raises(ValueError, match=r"no split 'validation'.*validation\.parquet"):
        load_labelled_images(tiny_dataset, "validation", 8)


def test_classifier_learns_the_tiny_dataset_and_round_trips(tiny_dataset, tiny_classifier, tmp_path):
    test = load_labelled_images(tiny_dataset, "test", 8)
    assert accuracy(tiny_classifier, test.images, test.labels) >= 0.9  # chance is 1/3
    tiny_classifier.save_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_classifier(tmp_path / "clf")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(loaded(x).features, tiny_classifier(x).features)
    with pytest.raises(ValueError, match="train-classifier"):
        load_classifier(tmp_path)


def test_classifier_refuses_wrong_channels(tiny_classifier):
    extractor = ClassifierFeatures(tiny_classifier)
    with pytest.raises(ValueError, match="1-channel"):
        extractor(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(2, 1, 8, 8))


# ---------------------------------------------------------------- cached dataset statistics


def test_dataset_statistics_are_computed_once_and_cached_as_safetensors(tiny_dataset, tiny_classifier, tmp_path):
    extractor = ClassifierFeatures(tiny_classifier)
    calls = []

    def counting(images):
        calls.append(len(images))
        return extractor(images)

    counting.name = extractor.name
    first = dataset_statistics(tiny_dataset, "train", 8, counting, cache_dir=tmp_path)
    second = dataset_statistics(tiny_dataset, "train", 8, counting, cache_dir=tmp_path)
    assert calls == [90]
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.cov, second.cov)
    assert second.num_samples == 90
    (cached,) = tmp_path.glob("*.safetensors")
    assert extractor.name in cached.name and "8px" in cached.name and "-train-" in cached.name
    with safe_open(cached, "np") as f:
        assert json.loads(f.metadata()["ddpmkit"])["split"] == "train"
    # another resolution or sample count is another entry
    dataset_statistics(tiny_dataset, "train", 16, counting, cache_dir=tmp_path)
    dataset_statistics(tiny_dataset, "train", 8, counting, cache_dir=tmp_path, max_samples=30)
    assert calls == [90, 90, 30]
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


# ---------------------------------------------------------------- FID offline


def test_missing_inception_weights_say_in_one_line_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for path in (None, tmp_path / "nowhere.pth"):
        with pytest.raises(FileNotFoundError) as error:
            find_inception_weights(path)
        message = str(error.value)
        assert "\n" not in message
        assert "pt_inception-2015-12-05-6726825d.pth" in message and "--inception_weights" in message
    cached = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_inception_weights() == cached


def test_inception_refuses_a_file_that_is_not_the_fid_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "other.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    with pytest.raises(ValueError, match="not the FID Inception weights"):
        FIDInceptionV3.from_weights(path)
    # without the hash check the file loads into the network, which maps uint8 images to 2048 features
    model = FIDInceptionV3.from_weights(path, check_hash=False)
    with torch.no_grad():
        features = model(torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8))
    assert features.shape == (1, 2048) and torch.isfinite(features).all()


@pytest.mark.slow  # about a minute: Inception-v3 at 299x299 and 2048-d covariances on a CPU
def test_fid_end_to_end_with_stand_in_weights(tiny_dataset, tmp_path, monkeypatch):
    # random weights stand in for the real file (not downloadable here): the whole FID path runs and caches
    import hashlib

    import ddpmkit.evaluation.inception as inception

    torch.manual_seed(0)
    path = tmp_path / "stand_in.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    monkeypatch.setattr(inception, "WEIGHTS_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    test = torch.from_numpy(random_subset(load_labelled_images(tiny_dataset, "test", 8), 3).images)  # the floor's
    kwargs = dict(classifier=None, fid=True, inception_weights=path, reference_samples=4, cache_dir=tmp_path)
    results = evaluate_images(test, tiny_dataset, **kwargs)
    assert math.isfinite(results["fid"]) and results["fid"] == pytest.approx(results["fid_floor"], rel=1e-4)
    assert results["fid_reference"] == "train (4 images)" and "classifier_skipped" in results
    assert len(list(tmp_path.glob("*inception-fid*.safetensors"))) == 2  # the reference and the floor


def test_tensorflow1_resize_samples_at_i_times_in_over_out():
    x = torch.tensor([[[[0.0, 10.0]]]])  # (1, 1, 1, 2)
    # output pixel i samples input position i * 2 / 4 = 0, 0.5, 1, 1.5 (clamped at the edge)
    resized = resize_like_tensorflow1(x.expand(1, 1, 2, 2), 4)
    torch.testing.assert_close(resized[0, 0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]))
    constant = resize_like_tensorflow1(torch.full((1, 3, 5, 5), 7.0), 299)
    torch.testing.assert_close(constant, torch.full((1, 3, 299, 299), 7.0))


# ---------------------------------------------------------------- evaluate, end to end


def test_real_images_score_far_better_than_noise(tiny_dataset, tiny_classifier, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no Inception weights: FID is skipped with the reason
    test = load_labelled_images(tiny_dataset, "test", 8)
    noise = torch.randint(0, 256, (30, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    kwargs = dict(classifier=tiny_classifier, cache_dir=tmp_path)
    real = evaluate_images(torch.from_numpy(test.images), tiny_dataset, **kwargs)
    fake = evaluate_images(noise, tiny_dataset, **kwargs)
    # the held-out images are the floor, measured the same way
    assert real["classifier_fd"] == pytest.approx(real["classifier_fd_floor"], rel=1e-4)
    assert fake["classifier_fd"] > 5 * real["classifier_fd_floor"]
    assert real["class_entropy"] == pytest.approx(math.log(3), rel=0.05)
    assert real["floor_num_samples"] == 30
    assert "pt_inception" in fake["fid_skipped"] and "fid" not in fake
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        evaluate_images(noise, tiny_dataset, fid=True, **kwargs)


def test_evaluate_pipeline_on_a_tiny_pipeline(tiny_pipeline, tiny_dataset, tiny_classifier, tmp_path):
    results = evaluate_pipeline(
        tiny_pipeline,
        tiny_dataset,
        num_samples=6,
        num_inference_steps=3,
        scheduler="ddim",
        batch_size=4,
        classifier=tiny_classifier,
        fid=False,
        cache_dir=tmp_path,
    )
    assert results["num_samples"] == 6 and results["floor_num_samples"] == 6
    assert results["scheduler"] == "ddim" and results["num_inference_steps"] == 3
    for key in ("classifier_fd", "classifier_fd_floor", "confidence", "class_entropy"):
        assert math.isfinite(results[key])
    assert len(results["class_histogram"]) == 3 and sum(results["class_histogram"]) == pytest.approx(1)
    assert "fid" not in results and "fid_skipped" not in results
    with pytest.raises(ValueError, match="scheduler 'euler' must be one of"):
        evaluate_pipeline(tiny_pipeline, tiny_dataset, num_samples=2, scheduler="euler", fid=False)


def test_evaluate_pipeline_returns_the_images_it_scored(tiny_pipeline, tiny_dataset, tiny_classifier, tmp_path):
    kwargs = dict(classifier=tiny_classifier, fid=False, cache_dir=tmp_path)
    results, images = evaluate_pipeline(
        tiny_pipeline, tiny_dataset, num_samples=5, num_inference_steps=2, seed=3, return_images=True, **kwargs
    )
    assert images.dtype == torch.uint8 and images.shape[0] == 5
    again = generate_images(with_scheduler(tiny_pipeline, "ddim"), 5, 2, seed=3)
    assert torch.equal(images, again)  # the same seeds give the same images
    assert results["classifier_fd"] == pytest.approx(evaluate_images(images, tiny_dataset, **kwargs)["classifier_fd"])


def test_evaluate_command_prints_a_table_and_writes_json(
    tiny_pipeline_dir, tiny_dataset, tiny_classifier, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    tiny_classifier.save_pretrained(tmp_path / "clf")
    args = [
        "evaluate",
        "--model",
        str(tiny_pipeline_dir),
        "--dataset",
        str(tiny_dataset),
        "--num_samples",
        "4",
        "--steps",
        "2",
        "--classifier",
        str(tmp_path / "clf"),
        "--cache_dir",
        str(tmp_path / "stats"),
    ]
    assert evaluation_main(args) == 0
    out, err = capsys.readouterr()
    assert "| classifier FD |" in out and "real-data floor (N=4)" in out
    assert err.count("\n") == 1 and "pt_inception" in err  # FID skipped, said in one line
    record = json.loads((tiny_pipeline_dir / "eval_results.json").read_text())
    assert record["ddim-2steps-n4-seed0"]["num_samples"] == 4
    # a second run with another sampler adds to the file
    assert evaluation_main([*args[:7], "--scheduler", "ddpm", *args[7:]]) == 0
    assert set(json.loads((tiny_pipeline_dir / "eval_results.json").read_text())) == {
        "ddim-2steps-n4-seed0",
        "ddpm-2steps-n4-seed0",
    }


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--model": "nowhere"}, "not a pipeline folder"),
        ({"--dataset": "nowhere"}, "no split 'train'"),
        ({"--num_samples": "1"}, "at least 2"),
        ({"--fid": "yes"}, "--inception_weights"),
        ({"--classifier": "nowhere"}, "--classifier nowhere is not a folder"),
        ({"--device": "nowhere"}, "--device 'nowhere' is not a device"),
    ],
)
def test_evaluate_command_bad_input_is_one_line_and_exit_2(
    tiny_pipeline_dir, tiny_dataset, tmp_path, capsys, monkeypatch, change, expected
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    options = {
        "--model": str(tiny_pipeline_dir),
        "--dataset": str(tiny_dataset),
        "--num_samples": "2",
        "--steps": "1",
        "--classifier": "none",
        "--cache_dir": str(tmp_path),
        **change,
    }
    assert evaluation_main(["evaluate", *[x for kv in options.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_train_classifier_command_saves_weights_and_accuracy(tiny_dataset, tmp_path, capsys):
    output = tmp_path / "clf"
    args = [
        "train-classifier",
        "--dataset",
        str(tiny_dataset),
        "--output",
        str(output),
        "--resolution",
        "8",
        "--epochs",
        "1",
        "--batch_size",
        "30",
    ]
    assert evaluation_main(args) == 0
    record = json.loads((output / "training.json").read_text())
    assert 0 <= record["test_accuracy"] <= 1 and record["train_samples"] == 90 and record["test_samples"] == 30
    assert load_classifier(output).config.sample_size == 8
    assert evaluation_main(["train-classifier", "--dataset", str(tmp_path), "--output", str(output)]) == 2
    assert "no split 'train'" in capsys.readouterr().err


# ---------------------------------------------------------------- the committed MNIST classifier


def test_committed_mnist_classifier_is_small_accurate_and_loads():
    path = bundled_classifier_path("mnist")
    assert path is not None
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 2 * 1024 * 1024
    record = json.loads((path / "training.json").read_text())
    assert record["test_accuracy"] >= 0.98 and record["test_samples"] == 10000
    model = load_classifier(path)
    assert isinstance(model, ImageClassifier)
    assert (model.config.in_channels, model.config.sample_size, model.config.num_classes) == (1, 32, 10)
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]


def test_random_subset_is_seeded_ordered_and_spans_a_class_sorted_split():
    labels = np.repeat(np.arange(10), 100)  # sorted by class, as CIFAR-10's Parquet files are
    data = LabelledImages(np.arange(1000).astype(np.uint8).reshape(1000, 1, 1, 1), labels, "sorted")
    subset = random_subset(data, 100)
    assert len(subset.images) == 100 and set(subset.labels.tolist()) == set(range(10))
    assert np.all(np.diff(subset.images.ravel().astype(int)) != 0) and subset.name == "sorted-random100-seed0"
    assert np.array_equal(random_subset(data, 100).labels, subset.labels)  # seeded
    assert not np.array_equal(random_subset(data, 100, seed=1).images, subset.images)
    assert random_subset(data, 1000) is data and random_subset(data, None) is data


def test_the_floor_of_a_class_sorted_split_is_a_random_draw(tiny_dataset, tiny_classifier, tmp_path):
    import datasets

    sorted_data = tmp_path / "sorted"
    sorted_data.mkdir()
    for split in ("train", "test"):
        table = datasets.Dataset.from_parquet(str(tiny_dataset / f"{split}.parquet")).sort("label")
        table.to_parquet(str(sorted_data / f"{split}.parquet"))
    images = torch.from_numpy(load_labelled_images(sorted_data, "train", 8, max_samples=6).images)  # class 0 only
    results = evaluate_images(images, sorted_data, classifier=tiny_classifier, fid=False, cache_dir=tmp_path)
    assert results["floor_num_samples"] == 6
    assert sum(share > 0 for share in results["class_histogram_floor"]) >= 2  # not the first six (all class 0)
    assert results["class_entropy_floor"] > results["class_entropy"]

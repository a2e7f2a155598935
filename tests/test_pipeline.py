import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tiny import make_tiny_pipeline

from ddpmkit import DDPMPipeline


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 5)
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_output_types(channels, mode):
    pipe = make_tiny_pipeline(in_channels=channels)
    pil = run(pipe, batch_size=2).images
    assert len(pil) == 2 and pil[0].mode == mode and pil[0].size == (8, 8)
    arr = run(pipe, batch_size=2, output_type="np").images
    assert arr.shape == (2, 8, 8, channels) and arr.min() >= 0 and arr.max() <= 1
    pt = run(pipe, batch_size=2, output_type="pt").images
    assert pt.shape == (2, channels, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(pil[0]).reshape(8, 8, channels), (arr[0] * 255).round().astype(np.uint8))
    (images,) = run(pipe, output_type="np", return_dict=False)
    assert images.shape == (1, 8, 8, channels)


def test_same_seed_same_images_and_per_image_generators(tiny_pipeline):
    a = run(tiny_pipeline, batch_size=3, output_type="np").images
    b = run(tiny_pipeline, batch_size=3, output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(tiny_pipeline, seed=1, batch_size=3, output_type="np").images)
    # One generator per image: image i depends only on its own seed, not on the batch it is drawn in.
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = tiny_pipeline(batch_size=3, generator=gens, num_inference_steps=5, output_type="np").images
    alone = tiny_pipeline(generator=[torch.Generator().manual_seed(12)], num_inference_steps=5, output_type="np")
    np.testing.assert_allclose(batch[2], alone.images[0], atol=1e-6)


def test_trajectory_records_noise_to_image(tiny_pipeline):
    out = run(tiny_pipeline, batch_size=2, num_inference_steps=10, output_type="pt", trajectory_steps=4)
    traj = out.trajectory
    assert traj.timesteps == sorted(traj.timesteps, reverse=True) and len(traj.timesteps) == 4
    assert traj.samples.shape == traj.pred_original_samples.shape == (4, 2, 1, 8, 8)
    # the first recorded x_t is the initial noise, the same noise the pipeline starts from
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(traj.samples[0], (noise / 2 + 0.5).clamp(0, 1))
    picked = run(tiny_pipeline, num_inference_steps=10, trajectory_steps=[0, -1]).trajectory
    assert picked.timesteps == [traj.timesteps[0], traj.timesteps[-1]]
    assert run(tiny_pipeline).trajectory is None


def test_progress_bar_can_be_turned_off(tiny_pipeline, capsys):
    tiny_pipeline.set_progress_bar_config(disable=False)
    run(tiny_pipeline)
    assert "5/5" in capsys.readouterr().err
    tiny_pipeline.set_progress_bar_config(disable=True)
    run(tiny_pipeline)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_inference_steps": 0}, "between 1 and 1000, got 0"),
        ({"num_inference_steps": 1001}, "got 1001"),
        ({"num_inference_steps": 2.5}, "must be an integer"),
        ({"output_type": "latent"}, "output_type 'latent' must be one of"),
        ({"generator": [torch.Generator()] * 2, "batch_size": 3}, "got 2 generators for batch_size 3"),
        ({"trajectory_steps": [50], "num_inference_steps": 5}, "trajectory step 50 is not a step index"),
    ],
)
def test_bad_call_arguments(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(**kwargs)


def test_saved_folder_layout(tiny_pipeline_dir):
    files = sorted(p.relative_to(tiny_pipeline_dir).as_posix() for p in tiny_pipeline_dir.rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    assert index["unet"] == ["ddpmkit.models.unet_conv", "ConvUNet2DModel"]
    assert index["scheduler"] == ["ddpmkit.schedulers.scheduling_linear_ddpm", "LinearDDPMScheduler"]


def test_round_trip_ddpmkit_and_stock_diffusers(tiny_pipeline, tiny_pipeline_dir):
    expected = run(tiny_pipeline, batch_size=2, output_type="np").images
    ours = DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    stock = diffusers.DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(run(pipe, batch_size=2, output_type="np").images, expected)
    assert type(stock.unet).__name__ == "ConvUNet2DModel"


def test_loads_a_folder_saved_by_stock_diffusers(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    stock = diffusers.DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    stock.set_progress_bar_config(disable=True)
    stock.save_pretrained(tmp_path)
    ours, stock = DDPMPipeline.from_pretrained(tmp_path), diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert isinstance(ours.unet, UNet2DModel) and isinstance(ours.scheduler, DDPMScheduler)
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(ours, output_type="np").images, run(stock, output_type="np").images)


def test_swapping_in_ddim(tiny_pipeline):
    tiny_pipeline.scheduler = DDIMScheduler.from_config(tiny_pipeline.scheduler.config)
    out = run(tiny_pipeline, batch_size=2, output_type="np", trajectory_steps=2)
    assert out.images.shape == (2, 8, 8, 1) and np.isfinite(out.images).all()
    assert out.trajectory.pred_original_samples is not None


def test_refuses_pickle_only_folder(tiny_pipeline_dir):
    unet_dir = tiny_pipeline_dir / "unet"
    state = DDPMPipeline.from_pretrained(tiny_pipeline_dir).unet.state_dict()
    torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="allow_pickle=True"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    pipe = DDPMPipeline.from_pretrained(tiny_pipeline_dir, allow_pickle=True)
    torch.testing.assert_close(pipe.unet.state_dict(), state)


def test_broken_folders_give_one_clear_error(tiny_pipeline_dir):
    weights = tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(OSError, match="truncated or damaged"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    (tiny_pipeline_dir / "unet" / "config.json").unlink()
    with pytest.raises(OSError, match="config.json is missing"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)

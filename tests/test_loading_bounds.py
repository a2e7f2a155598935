"""Folders naming diffusers classes pass the same bounds as ddpmkit's own, before anything is built, and each class
only in a part it can play."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ddpmkit import CorruptFolderError, DDPMPipeline, UnsafeFolderError
from ddpmkit.commands import main


@pytest.fixture
def diffusers_folder(tmp_path):
    """A stock diffusers UNet2DModel + DDPMScheduler folder (tiny)."""
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def _edit(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_the_stock_folder_loads(diffusers_folder):
    pipe = DDPMPipeline.from_pretrained(diffusers_folder)
    assert type(pipe.unet).__name__ == "UNet2DModel"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_train_timesteps": 100_000_000}, "num_train_timesteps must be an integer in"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be an integer in"),
        ({"beta_start": -0.1}, "0 < beta_start <= beta_end < 1"),
        ({"trained_betas": [0.5, 2.0]}, "trained_betas must be a list"),
    ],
)
def test_a_diffusers_scheduler_config_out_of_bounds_is_refused_before_building(diffusers_folder, changes, message):
    _edit(diffusers_folder / "scheduler" / "scheduler_config.json", **changes)
    with pytest.raises(UnsafeFolderError, match=message):
        DDPMPipeline.from_pretrained(diffusers_folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"block_out_channels": [16384, 16384]}, "parameters"),
        ({"sample_size": 100_000}, "sample_size must be an integer in"),
        ({"layers_per_block": 10_000}, "layers_per_block must be an integer in"),
    ],
)
def test_a_huge_diffusers_unet_is_refused_before_anything_is_allocated(diffusers_folder, changes, message):
    _edit(diffusers_folder / "unet" / "config.json", **changes)
    with pytest.raises(UnsafeFolderError, match=message):
        DDPMPipeline.from_pretrained(diffusers_folder)


def test_a_class_in_a_part_it_cannot_play_is_refused(diffusers_folder):
    index = json.loads((diffusers_folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "AutoencoderKL"]
    (diffusers_folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeFolderError, match="AutoencoderKL as the unet"):
        DDPMPipeline.from_pretrained(diffusers_folder)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"sample_size": ' + "9" * 5000 + "}"])
def test_deep_or_huge_number_json_is_one_error_naming_the_file(diffusers_folder, text):
    (diffusers_folder / "unet" / "config.json").write_text(text)
    with pytest.raises(CorruptFolderError, match=r"unet/config.json"):
        DDPMPipeline.from_pretrained(diffusers_folder)


def test_sample_refuses_an_allocation_it_cannot_make_in_one_line(diffusers_folder, tmp_path, capsys):
    _edit(diffusers_folder / "unet" / "config.json", sample_size=8192)
    code = main(["sample", "--model", str(diffusers_folder), "--num_images", "64", "--batch_size", "64",
                 "--steps", "2", "--out", str(tmp_path / "s.png"), "--device", "cpu", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--batch_size 64" in err[0] and "GiB" in err[0]
    assert not (tmp_path / "s.png").exists()


def test_int_weights_are_refused_at_load(diffusers_folder):
    from safetensors.torch import load_file, save_file

    path = diffusers_folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    save_file({k: v.to(torch.int32) for k, v in tensors.items()}, str(path))
    with pytest.raises(CorruptFolderError, match="I32 weights"):
        DDPMPipeline.from_pretrained(diffusers_folder)

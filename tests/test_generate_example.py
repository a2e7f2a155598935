import importlib.util
import re
from pathlib import Path

import PIL.Image
import pytest
import torch

from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler
from ddpmkit.commands import main as ddpmkit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generate.py"


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("generate_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    unet = ConvUNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, time_embedding_dim=8)
    DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler()).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_docstring_snippet_makes_a_folder_that_ddpmkit_samples(generate, tmp_path, monkeypatch, capsys):
    snippet = re.search(r"```python\n(.*?)```", generate.__doc__, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    # the snippet and --make_tiny write the same pipeline
    generate.main(generate.parse_args(["--make_tiny", "made"]))
    snippet_config, made_config = (DDPMPipeline.from_pretrained(p).unet.config for p in ("tiny-pipeline", "made"))
    assert {k: v for k, v in snippet_config.items() if k != "_name_or_path"} == {
        k: v for k, v in made_config.items() if k != "_name_or_path"
    }
    # the README's first command runs on it (a few steps here)
    args = ["sample", "--model", "tiny-pipeline", "--num_images", "2", "--steps", "2", "--quiet"]
    assert ddpmkit(args) == 0
    assert "wrote samples.png" in capsys.readouterr().out
    with PIL.Image.open("samples.png") as grid:
        assert grid.size == (2 * 32 + 3 * 2, 32 + 2 * 2)


@pytest.mark.parametrize("scheduler, x0_rows", [("ddim", 2), ("dpmsolver", 1)])
def test_generate_writes_grid_trajectory_and_gif(generate, tiny_dir, tmp_path, scheduler, x0_rows):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_dir), "--output_dir", str(out), "--num_images", "5", "--num_trajectories", "3"]
    generate.main(generate.parse_args(argv + ["--num_frames", "4", "--steps", "6", "--scheduler", scheduler]))
    with PIL.Image.open(out / "samples.png") as grid:
        assert grid.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)
    with PIL.Image.open(out / "trajectory.png") as picture:
        rows = 3 * x0_rows  # x_t, and x_0 beneath it when the scheduler predicts one
        assert picture.size == (4 * 8 + 5 * 2, rows * 8 + (rows + 1) * 2 + (2 * 2 if x0_rows == 2 else 0))
    with PIL.Image.open(out / "trajectory.gif") as gif:
        assert gif.n_frames == 4


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--model", "a", "--make_tiny", "b"],
        ["--model", "a", "--steps", "0"],
        ["--model", "a", "--num_frames", "1"],
    ],
)
def test_generate_rejects_bad_arguments(generate, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler
from ddpmkit.commands import SUBCOMMANDS, build_parser, main
from ddpmkit.pipelines.sampling import SAMPLERS as DEFAULT_STEPS

TINY_UNET = {"sample_size": 8, "block_out_channels": (8, 16), "norm_num_groups": 4, "time_embedding_dim": 8}


def make_pipeline(in_channels: int = 1) -> DDPMPipeline:
    torch.manual_seed(0)
    unet = ConvUNet2DModel(in_channels=in_channels, **TINY_UNET).eval()
    return DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "pipe"
    make_pipeline().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (samples.png, trajectory.gif) land here


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels(path: Path, mode: str | None = None) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert(mode) if mode else image).astype(int)


def assert_usage_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("ddpmkit")
    for fragment in fragments:
        assert fragment in err, err


# -- help ---------------------------------------------------------------------------------------------------------


def test_python_m_ddpmkit_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "ddpmkit", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ddpmkit")
    for command in ("sample", "trajectory", "preview", "evaluate", "train-classifier", "convert-tutorial", "info"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["sample", "trajectory", "preview", "convert-tutorial", "info", "card"])
def test_each_command_has_help_with_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: ddpmkit {command}")
    assert "example: ddpmkit " + command in out.replace("\n", " ")


def test_every_subcommand_is_registered_by_its_own_function():
    names = [m.__name__.rsplit(".", 1)[-1] for m in SUBCOMMANDS]
    assert names == ["sample", "trajectory", "train", "evaluate", "card", "preview", "info", "convert_tutorial",
                     "train_classifier"]  # fmt: skip
    assert all(callable(m.add_parser) and callable(m.run) for m in SUBCOMMANDS)


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "usage: ddpmkit" in err


# -- sample -------------------------------------------------------------------------------------------------------


def test_sample_writes_a_grid_and_one_file_per_image(capsys, model_dir, tmp_path):
    out, out_dir = tmp_path / "grid.png", tmp_path / "images"
    code, stdout, _ = run(
        capsys, "sample", "--model", model_dir, "--num_images", 5, "--batch_size", 2, "--steps", 3,
        "--seed", 7, "--out", out, "--out_dir", out_dir, "--quiet",
    )  # fmt: skip
    assert code == 0
    assert "5 images, ddim 3 steps, seed 7" in stdout
    with PIL.Image.open(out) as grid:
        assert grid.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2) and grid.mode == "L"  # 3 columns, 2 rows, padding 2
    assert {p.name for p in out_dir.iterdir()} == {f"ddim3_seed{s}.png" for s in range(7, 12)}
    # the grid's second image is the file of seed 8
    assert (pixels(out)[2:10, 12:20] == pixels(out_dir / "ddim3_seed8.png")).all()


def test_sample_images_depend_on_seed_not_on_batch_size(capsys, model_dir, tmp_path):
    for name, batch_size, seed, count in (("a", 1, 3, 4), ("b", 4, 3, 4), ("c", 3, 5, 3)):
        code, _, _ = run(
            capsys, "sample", "--model", model_dir, "--num_images", count, "--batch_size", batch_size,
            "--seed", seed, "--steps", 4, "--out", tmp_path / f"{name}.png", "--out_dir", tmp_path / name, "--quiet",
        )  # fmt: skip
        assert code == 0

    def differ(run_a: str, seed_a: int, run_b: str, seed_b: int) -> int:
        a, b = (pixels(tmp_path / r / f"ddim4_seed{s}.png") for r, s in ((run_a, seed_a), (run_b, seed_b)))
        return np.abs(a - b).max()

    for s in (3, 4, 5, 6):
        # same seed, batch of 1 vs batch of 4: the same image up to float rounding (at most one grey level)
        assert differ("a", s, "b", s) <= 1
    for s in (5, 6):  # image 2 of seed 3 is image 0 of seed 5
        assert differ("a", s, "c", s) <= 1
    assert differ("a", 3, "a", 4) > 10


def test_sample_out_dir_is_never_overwritten_without_overwrite(capsys, model_dir, tmp_path):
    args = ["sample", "--model", model_dir, "--num_images", 2, "--steps", 2, "--quiet"]
    args += ["--out", tmp_path / "grid.png", "--out_dir", tmp_path / "images", "--seed"]
    assert run(capsys, *args, 0)[0] == 0
    first = tmp_path / "images" / "ddim2_seed0.png"
    first.write_bytes(b"not replaced")
    code, _, err = run(capsys, *args, 0)
    assert_usage_error(code, err, "already holds ddim2_seed0.png and 1 more", "--overwrite")
    assert first.read_bytes() == b"not replaced"
    code, _, err = run(capsys, *args, 1)  # overlaps in seed 1
    assert_usage_error(code, err, "already holds ddim2_seed1.png;")
    assert run(capsys, *args, 2)[0] == 0  # another seed adds files beside the old ones
    assert len(list((tmp_path / "images").iterdir())) == 4
    assert run(capsys, *args, 0, "--overwrite")[0] == 0
    assert first.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver"])
def test_sample_with_other_schedulers_uses_their_default_steps(capsys, model_dir, tmp_path, scheduler):
    code, stdout, _ = run(
        capsys, "sample", "--model", model_dir, "--num_images", 2, "--scheduler", scheduler, "--seed", 1,
        "--out", tmp_path / "grid.png", "--quiet",
    )  # fmt: skip
    assert code == 0
    assert f"{scheduler} {DEFAULT_STEPS[scheduler]} steps" in stdout
    assert pixels(tmp_path / "grid.png").std() > 0


def test_sample_ddim_differs_from_ddpm(capsys, model_dir, tmp_path):
    for scheduler in ("ddpm", "ddim"):
        args = ["--scheduler", scheduler, "--steps", 5, "--seed", 1, "--out", tmp_path / f"{scheduler}.png"]
        assert run(capsys, "sample", "--model", model_dir, "--num_images", 2, "--quiet", *args)[0] == 0
    assert np.abs(pixels(tmp_path / "ddpm.png") - pixels(tmp_path / "ddim.png")).max() > 10


def test_sample_progress_bars_unless_quiet(capsys, model_dir, tmp_path):
    args = ["sample", "--model", model_dir, "--num_images", 4, "--batch_size", 2, "--steps", 3]
    code, _, err = run(capsys, *args, "--out", tmp_path / "a.png")
    assert code == 0 and "sampling" in err and "denoising" in err
    code, _, err = run(capsys, *args, "--out", tmp_path / "b.png", "--quiet")
    assert code == 0 and err == ""


def test_sample_in_bfloat16_on_cpu(capsys, model_dir, tmp_path):
    code, stdout, _ = run(
        capsys, "sample", "--model", model_dir, "--num_images", 2, "--steps", 3, "--dtype", "bfloat16",
        "--device", "cpu", "--out", tmp_path / "grid.png", "--quiet",
    )  # fmt: skip
    assert code == 0 and "on cpu" in stdout


# -- bad input: one line on stderr, exit code 2 ---------------------------------------------------------------------


@pytest.fixture
def broken_dirs(tmp_path, model_dir):
    import shutil

    dirs = {"missing": tmp_path / "missing", "file": tmp_path / "file.txt", "empty": tmp_path / "empty"}
    dirs["file"].write_text("x")
    dirs["empty"].mkdir()
    dirs["truncated"] = tmp_path / "truncated"
    shutil.copytree(model_dir, dirs["truncated"])
    weights = dirs["truncated"] / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    dirs["foreign"] = tmp_path / "foreign"
    shutil.copytree(model_dir, dirs["foreign"])
    index = json.loads((dirs["foreign"] / "model_index.json").read_text())
    index["unet"] = ["evil_package", "Model"]
    (dirs["foreign"] / "model_index.json").write_text(json.dumps(index))
    return dirs


@pytest.mark.parametrize(
    "folder, message",
    [
        ("missing", "no such folder"),
        ("file", "is a file, not a pipeline folder"),
        ("empty", "is not a pipeline folder (it has no model_index.json)"),
        ("truncated", "truncated or damaged"),
        ("foreign", "evil_package"),
    ],
)
@pytest.mark.parametrize("command", ["sample", "trajectory", "info"])
def test_bad_model_folders(capsys, broken_dirs, tmp_path, folder, message, command):
    if command == "info" and folder == "truncated":
        # info reads only the header, which these 100 bytes still hold: it must say the file is damaged
        message = "damaged"
    outputs = [] if command == "info" else ["--out", tmp_path / "o.png"]
    code, _, err = run(capsys, command, "--model", broken_dirs[folder], *outputs)
    assert_usage_error(code, err, f"ddpmkit {command}: error:", message)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--steps", "-5"], "argument --steps: must be a positive integer, got -5"),
        (["--steps", "ten"], "argument --steps: 'ten' is not an integer"),
        (["--num_images", "-1"], "argument --num_images: must be a positive integer, got -1"),
        (["--batch_size", "0"], "argument --batch_size: must be a positive integer, got 0"),
        (["--num_threads", "0"], "argument --num_threads: must be a positive integer, got 0"),
        (["--seed", "-1"], "argument --seed: must be between 0 and"),
        (["--scheduler", "euler"], "argument --scheduler: invalid choice: 'euler'"),
        (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
        (["--device", "toaster"], "--device 'toaster' is not a device"),
        (["--steps", "1001"], "--steps 1001 is more than the 1000 timesteps"),
        (["--out", "samples"], "cannot tell the image format of 'samples'"),
        (["--out", "{file}/samples.png"], "is a file, not a folder"),
        (["--out", "{tmp}"], "is a folder; name a file to write"),
        (["--out_dir", "{file}"], "is a file, not a folder"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_sample_bad_arguments(capsys, model_dir, tmp_path, extra, message):
    (tmp_path / "file.txt").write_text("x")
    extra = [e.format(file=tmp_path / "file.txt", tmp=tmp_path) for e in extra]
    code, _, err = run(capsys, "sample", "--model", model_dir, "--num_images", 1, "--out", tmp_path / "s.png", *extra)
    assert_usage_error(code, err, "ddpmkit sample: error:", message)
    assert not (tmp_path / "s.png").exists()


def test_num_threads_sets_the_cpu_threads_of_a_command(capsys, model_dir, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        code, _, err = run(capsys, "sample", "--model", model_dir, "--num_images", 1, "--steps", 2, "--quiet",
                           "--num_threads", 1, "--out", tmp_path / "s.png")  # fmt: skip
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["sample", "trajectory", "evaluate"])
def test_every_sampling_command_takes_num_threads(command):
    extra = ["--dataset", "mnist"] if command == "evaluate" else []
    args = build_parser().parse_args([command, "--model", "m", *extra, "--num_threads", "3"])
    assert args.num_threads == 3


def test_sample_without_model_names_the_missing_option(capsys):
    code, _, err = run(capsys, "sample")
    assert_usage_error(code, err, "the following arguments are required: --model")


def test_sample_on_cuda_without_cuda(capsys, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, "sample", "--model", model_dir, "--device", "cuda", "--out", tmp_path / "s.png")
    assert_usage_error(code, err, "CUDA is not available", "--device cpu")


def test_unwritable_output_folder(capsys, model_dir, tmp_path, monkeypatch):
    # permissions do not bind root, so the check itself is made to see a read-only folder
    import os

    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    code, _, err = run(capsys, "sample", "--model", model_dir, "--out", locked / "s.png")
    assert_usage_error(code, err, "is not writable")


# -- trajectory ---------------------------------------------------------------------------------------------------


def test_trajectory_picture_runs_from_noise_to_the_sampled_image(capsys, model_dir, tmp_path):
    out, gif = tmp_path / "t.png", tmp_path / "t.gif"
    code, stdout, _ = run(
        capsys, "trajectory", "--model", model_dir, "--num_samples", 3, "--num_frames", 4, "--steps", 6,
        "--seed", 11, "--show_x0", "--out", out, "--gif", gif, "--quiet",
    )  # fmt: skip
    assert code == 0
    assert "columns t = 830, 498, 166, final" in stdout  # every 166th of 1000 timesteps, "leading" spacing
    picture = pixels(out)
    assert picture.shape == (6 * 8 + 7 * 2 + 2 * 2, 4 * 8 + 5 * 2)  # 3 pairs of rows, 4 columns
    # column 0 of sample 1 is its starting noise, drawn from seed 11 + 1
    noise = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(12))
    expected = ((noise / 2 + 0.5).clamp(0, 1) * 255).round()[0, 0].numpy()
    top = 2 + 2 * 10 + 2  # row 2 (the x_t row of sample 1), after one pair gap
    assert np.abs(picture[top : top + 8, 2:10] - expected).max() <= 1
    # the last column is what `ddpmkit sample` gives for that seed
    assert run(capsys, "sample", "--model", model_dir, "--num_images", 1, "--seed", 12, "--steps", 6,
               "--out", tmp_path / "s.png", "--quiet")[0] == 0  # fmt: skip
    assert np.abs(picture[top : top + 8, 32:40] - pixels(tmp_path / "s.png")[2:10, 2:10]).max() <= 1
    with PIL.Image.open(gif) as animation:
        assert animation.n_frames == 7  # every step and the final image: fewer than --gif_frames 50
        assert animation.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)


def test_trajectory_with_dpmsolver_and_default_steps(capsys, model_dir, tmp_path):
    code, stdout, _ = run(
        capsys, "trajectory", "--model", model_dir, "--scheduler", "dpmsolver", "--num_samples", 2,
        "--gif_frames", 5, "--out", tmp_path / "t.png", "--gif", tmp_path / "t.gif", "--quiet", "--seed", 0,
    )  # fmt: skip
    assert code == 0 and "dpmsolver 20 steps" in stdout
    assert pixels(tmp_path / "t.png").shape == (2 * 8 + 3 * 2, 10 * 8 + 11 * 2)
    with PIL.Image.open(tmp_path / "t.gif") as animation:
        # GIF writers merge identical consecutive frames (adding up their durations), so count the time shown
        durations = []
        for index in range(animation.n_frames):
            animation.seek(index)
            durations.append(animation.info["duration"])
    assert sum(durations) == 4 * 80 + 1500 and 2 <= len(durations) <= 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_frames", "1"], "--num_frames must be at least 2"),
        (["--num_frames", "0"], "argument --num_frames: must be a positive integer"),
        (["--num_frames", "12", "--steps", "10"], "--num_frames 12 needs at least 11 steps, got --steps 10"),
        (["--num_samples", "-2"], "argument --num_samples: must be a positive integer, got -2"),
        (["--show_x0", "--scheduler", "dpmsolver"], "--show_x0 needs a scheduler that predicts x_0"),
        (["--gif", "{tmp}/t.png"], "name it with one of .gif"),
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--scheduler", "plms"], "invalid choice: 'plms'"),
    ],
)
def test_trajectory_bad_arguments(capsys, model_dir, tmp_path, extra, message):
    extra = [e.format(tmp=tmp_path) for e in extra]
    code, _, err = run(capsys, "trajectory", "--model", model_dir, "--out", tmp_path / "t.png", *extra)
    assert_usage_error(code, err, "ddpmkit trajectory: error:", message)
    assert not (tmp_path / "t.png").exists()


# -- info ---------------------------------------------------------------------------------------------------------


def test_info_counts_parameters_without_loading_weights(capsys, model_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("info must not load the pipeline")

    monkeypatch.setattr(DDPMPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(ConvUNet2DModel, "from_pretrained", refuse)
    expected = sum(p.numel() for p in make_pipeline().unet.parameters())
    code, out, _ = run(capsys, "info", "--model", model_dir)
    assert code == 0
    assert f"{expected:,} parameters (F32" in out
    assert "unet        ddpmkit.ConvUNet2DModel" in out and "scheduler   ddpmkit.LinearDDPMScheduler" in out
    assert "block_out_channels = [8, 16]" in out and "num_train_timesteps = 1000" in out
    code, out, _ = run(capsys, "info", "--model", model_dir, "--json")
    info = json.loads(out)
    assert info["components"]["unet"]["weights"]["parameters"] == expected
    assert info["components"]["scheduler"]["config"]["beta_end"] == 0.02
    assert "card" not in info


@pytest.mark.parametrize("change, message", [
    ("link README.md", "README.md is a link to"),
    ("link unet/config.json", "unet/config.json is a link to"),
    ("component ../secret", "names a component '../secret'"),
    ("component /etc", "names a component '/etc'"),
])  # fmt: skip
def test_info_reads_nothing_outside_the_folder(capsys, model_dir, tmp_path, change, message):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(model_dir, folder)
    secret = tmp_path / "secret"
    shutil.copytree(model_dir / "unet", secret)
    (secret / "README.md").write_text("SECRET")
    kind, name = change.split(" ")
    if kind == "link":
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(secret / Path(name).name if name != "README.md" else secret / "README.md")
    else:
        index = json.loads((folder / "model_index.json").read_text())
        index[name] = ["ddpmkit", "ConvUNet2DModel"]
        (folder / "model_index.json").write_text(json.dumps(index))
    code, out, err = run(capsys, "info", "--model", folder)
    assert_usage_error(code, err, message)
    assert "SECRET" not in out + err


def test_info_reads_training_metadata_from_the_json_not_the_card(capsys, model_dir, tmp_path):
    import shutil

    folder = tmp_path / "trained"
    shutil.copytree(model_dir, folder)
    (folder / "training_args.json").write_text(json.dumps({
        "command": ["ddpmkit", "train", "--dataset", "mnist"], "dataset_id": "ylecun/mnist", "learning_rate": 1e-4,
        "max_train_steps": 3, "eval_samples": 4, "eval_sampler": "ddim", "device": "cpu (test, 1 threads)",
    }))  # fmt: skip
    (folder / "eval_history.json").write_text(json.dumps([{"step": 3, "classifier_fd": 12.5}]))
    (folder / "README.md").write_text("---\na: &a [*a, *a]\n---\n| learning_rate | 9 |\n")  # never read
    code, out, _ = run(capsys, "info", "--model", folder)
    assert code == 0
    assert "command = ddpmkit train --dataset mnist" in out and "learning_rate = 0.0001" in out
    assert "classifier FD (4 samples, ddim-50, step 3) = 12.5" in out and "= 9" not in out
    info = json.loads(run(capsys, "info", "--model", folder, "--json")[1])
    assert info["card"]["training"]["dataset"] == "ylecun/mnist"
    assert info["card"]["hyperparameters"] == {"learning_rate": 0.0001, "max_train_steps": 3}


# -- preview ------------------------------------------------------------------------------------------------------


def test_preview_of_a_folder_of_images(capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        PIL.Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "preview.png"
    code, stdout, _ = run(
        capsys, "preview", "--train_data_dir", images, "--resolution", 8, "--nrow", 3,
        "--cache_dir", tmp_path / "cache", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0 and "9 of 12 images" in stdout
    grid = pixels(out, "L")
    assert grid.shape == (24, 24)
    tiles = {grid[r : r + 8, c : c + 8].tobytes() for r in (0, 8, 16) for c in (0, 8, 16)}
    originals = {pixels(images / f"{i}.png").tobytes() for i in range(12)}
    assert len(tiles) == 9 and tiles <= originals


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no training data given"),
        (["--train_data_dir", "{tmp}/nowhere"], "does not exist"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--dataset", "mnist", "--out", "{tmp}/file.txt/p.png"], "is a file, not a folder"),
        (["--dataset", "mnist", "--nrow", "0"], "argument --nrow: must be a positive integer"),
    ],
)
def test_preview_bad_arguments(capsys, tmp_path, extra, message):
    (tmp_path / "file.txt").write_text("x")
    extra = [e.format(tmp=tmp_path) for e in extra]
    code, _, err = run(capsys, "preview", "--cache_dir", tmp_path / "cache", *extra)
    assert_usage_error(code, err, "ddpmkit preview: error:", message)


# -- convert-tutorial ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_converter(monkeypatch):
    """Stands in for ddpmkit.convert so these tests check the command's wiring, not the conversion."""
    calls = []

    def convert_tutorial_checkpoint(checkpoint_path, output_dir, allow_pickle=False, sample_size=32):
        calls.append((Path(checkpoint_path), Path(output_dir), allow_pickle))
        if not allow_pickle:
            raise ValueError(f"{checkpoint_path} is a pickle; pass --allow-pickle if you trust it")
        pipe = make_pipeline()
        pipe.save_pretrained(output_dir)
        return pipe

    monkeypatch.setitem(
        sys.modules, "ddpmkit.convert", types.SimpleNamespace(convert_tutorial_checkpoint=convert_tutorial_checkpoint)
    )
    return calls


def test_convert_tutorial_calls_the_converter(capsys, tmp_path, fake_converter):
    checkpoint = tmp_path / "number_model.pt"
    checkpoint.write_bytes(b"pickle")
    out = tmp_path / "converted"
    code, _, err = run(capsys, "convert-tutorial", checkpoint, "--out", out)
    assert_usage_error(code, err, "is a pickle; pass --allow-pickle")
    code, stdout, _ = run(capsys, "convert-tutorial", checkpoint, "--out", out, "--allow-pickle")
    assert code == 0 and f"ddpmkit sample --model {out}" in stdout
    assert fake_converter[-1] == (checkpoint, out, True)
    code, _, err = run(capsys, "convert-tutorial", checkpoint, "--out", out, "--allow-pickle")
    assert_usage_error(code, err, "is not empty; pass --overwrite")
    assert run(capsys, "convert-tutorial", checkpoint, "--out", out, "--allow-pickle", "--overwrite")[0] == 0


def test_convert_tutorial_bad_arguments(capsys, tmp_path, fake_converter):
    code, _, err = run(capsys, "convert-tutorial", tmp_path / "missing.pt", "--out", tmp_path / "o")
    assert_usage_error(code, err, "missing.pt is not a file")
    code, _, err = run(capsys, "convert-tutorial", tmp_path / "missing.pt")
    assert_usage_error(code, err, "required: --out")
    assert fake_converter == []


def test_convert_tutorial_then_sample_and_info(capsys, tmp_path):
    import tutorial_reference as tutorial
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = tutorial.UNet(1, channels=(32, 64), time_emb_size=32)
    save_file(model.state_dict(), tmp_path / "tutorial.safetensors")
    out = tmp_path / "converted"
    code, stdout, _ = run(
        capsys, "convert-tutorial", tmp_path / "tutorial.safetensors", "--out", out, "--sample_size", 8
    )
    assert code == 0 and "1 channel(s) 8px" in stdout
    code, stdout, _ = run(capsys, "info", "--model", out)
    assert code == 0 and f"{sum(p.numel() for p in model.parameters()):,} parameters" in stdout
    assert "clip_prev_sample = true" in stdout  # the tutorial's sampler
    code, _, _ = run(capsys, "sample", "--model", out, "--num_images", 2, "--steps", 3, "--out", "s.png", "--quiet")
    assert code == 0 and pixels(tmp_path / "s.png").shape == (8 + 4, 2 * 8 + 3 * 2)


def test_a_subcommand_is_added_in_one_line(capsys, monkeypatch):
    import types

    import ddpmkit.commands as commands
    from ddpmkit.commands.common import positive_int

    def add_parser(subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--times", type=positive_int, default=1)
        parser.set_defaults(run=lambda args: print("hello " * args.times) or 0)
        return parser

    hello = types.SimpleNamespace(add_parser=add_parser, run=None)
    monkeypatch.setattr(commands, "SUBCOMMANDS", commands.SUBCOMMANDS + (hello,))
    assert run(capsys, "hello", "--times", 2)[:2] == (0, "hello hello \n")
    code, _, err = run(capsys, "hello", "--times", 0)
    assert_usage_error(code, err, "ddpmkit hello: error: argument --times: must be a positive integer, got 0")


def test_trajectory_gif_goes_beside_the_picture_by_default(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "pictures" / "denoise.png"
    out.parent.mkdir()
    main(["trajectory", "--model", str(tiny_pipeline_dir), "--steps", "3", "--num_frames", "3", "--gif_frames", "3",
          "--out", str(out), "--quiet", "--seed", "0"])  # fmt: skip
    assert out.is_file() and (tmp_path / "pictures" / "denoise.gif").is_file()
    assert not (tmp_path / "trajectory.gif").exists()

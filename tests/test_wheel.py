"""``ddpmkit train`` from a built, non-editable install: what ``pip install ddpmkit`` gives a user can train."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers_train import ROOT, make_parquet, tiny_model_config, train_argv


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel and unpacked into a folder of its own (no editable link to the source)."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = root.glob("ddpmkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ddpmkit/commands/train.py" in names and "ddpmkit/training/trainer.py" in names
    assert any(n.startswith("ddpmkit/assets/mnist_classifier/") and n.endswith(".safetensors") for n in names)
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    target = root / "site"
    zipfile.ZipFile(wheel).extractall(target)
    return target


def test_the_installed_wheel_trains_and_samples(installed, tmp_path):
    data = make_parquet(tmp_path / "data" / "train.parquet", n=16)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    where = subprocess.run([sys.executable, "-c", "import ddpmkit; print(ddpmkit.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed)  # the wheel's copy, not the source tree
    argv = train_argv(data, out, tiny_model_config(tmp_path), max_train_steps=2, train_batch_size=4)
    result = subprocess.run([sys.executable, "-m", "ddpmkit", "train", *argv, "--quiet"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    sample = subprocess.run(
        [sys.executable, "-m", "ddpmkit", "sample", "--model", str(out), "--num_images", "2", "--steps", "2",
         "--seed", "0", "--out", str(tmp_path / "s.png"), "--quiet"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert (tmp_path / "s.png").is_file()

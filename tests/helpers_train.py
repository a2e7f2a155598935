"""Tiny datasets, configs and in-process runs of ``ddpmkit train`` shared by the training tests."""

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "examples" / "train.py"
TRAIN_MODULE = ["-m", "ddpmkit", "train"]  # what `accelerate launch -m ddpmkit train` runs
TINY_MODEL = {"block_out_channels": [8, 16], "time_embedding_dim": 8, "norm_num_groups": 4}


def random_image(size=(8, 8), mode: str = "L", seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return PIL.Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_parquet(path: Path, n: int = 32, mode: str = "L", size=(8, 8), image_column: str = "image",
                 label_column: str | None = "label") -> Path:  # fmt: skip
    """A Parquet file laid out like the Hub's MNIST (PNG bytes in an Image column, ClassLabel labels)."""
    import datasets

    features = {image_column: datasets.Image()}
    data = {image_column: [{"bytes": png_bytes(random_image(size, mode, i)), "path": None} for i in range(n)]}
    if label_column:
        features[label_column] = datasets.ClassLabel(names=[str(i) for i in range(10)])
        data[label_column] = [i % 10 for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(data, features=datasets.Features(features)).to_parquet(str(path))
    return path


def make_png_folder(
    folder: Path, n: int = 8, mode: str = "RGB", size=(8, 8), classes: list[str] | None = None
) -> Path:
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        random_image(size, mode, i).save(sub / f"img_{i:03d}.png")
    return folder


def tiny_model_config(folder: Path, **overrides) -> Path:
    path = folder / "tiny_unet.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**TINY_MODEL, **overrides}))
    return path


def train_argv(data_file: Path, output_dir: Path, model_config: Path, *extra: str, **flags) -> list[str]:
    """The argv of a tiny run: 8x8 images, a two-level UNet, 2 sampling steps, no TensorBoard unless asked."""
    base = {
        "dataset": "mnist", "train_data_files": str(data_file), "resolution": 8, "model_config": str(model_config),
        "output_dir": str(output_dir), "train_batch_size": 4, "max_train_steps": 4, "checkpointing_steps": 1000,
        "save_images_steps": 1000, "ddpm_num_inference_steps": 2, "eval_batch_size": 4, "logging_steps": 2,
        "lr_warmup_steps": 2, "learning_rate": 1e-3, "report_to": "none",
        "cache_dir": str(output_dir.parent / "cache"),
    }  # fmt: skip
    base.update(flags)
    argv = []
    for key, value in base.items():
        if value is None:
            continue
        argv += [f"--{key}", str(value)]
    return argv + list(extra)


def parse_train_argv(argv: list[str]):
    """The :class:`~ddpmkit.training.TrainingConfig` that ``ddpmkit train <argv>`` builds."""
    from ddpmkit.commands import build_parser
    from ddpmkit.commands.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def train_cli(argv: list[str]) -> int:
    """``ddpmkit train <argv>`` in this process, returning its exit code."""
    from ddpmkit.commands import main

    reset_accelerate()
    try:
        return main(["train", *argv])
    finally:
        reset_accelerate()


def reset_accelerate() -> None:
    """Forgets Accelerate's process-wide singletons, so each in-process run starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_train(argv: list[str]) -> Path:
    """Runs ``ddpmkit.training.train`` with the config of ``ddpmkit train <argv>`` in this process (errors raise)."""
    from ddpmkit.training import train

    reset_accelerate()
    try:
        return train(parse_train_argv(argv))
    finally:
        reset_accelerate()


def unet_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))

"""The ``ddpmkit`` command line: sample images, picture the denoising process, preview a dataset, convert the
tutorial's checkpoints and describe a pipeline folder.

Every subcommand is built by its own ``add_<name>_parser(subparsers)`` and run by ``run_<name>(args)``; adding one
is one line in :data:`SUBCOMMANDS`. Bad input (a missing folder, ``--steps 0``, an unwritable output path, ...)
prints one line on stderr and exits with code 2.
"""

import argparse
import json
import math
import os
import re
import secrets
import struct
import sys
import time
from pathlib import Path

from .pipelines.samplers import SAMPLERS as DEFAULT_STEPS

SCHEDULERS = tuple(DEFAULT_STEPS)
DTYPES = ("float32", "bfloat16", "float16")
MAX_SEED = 2**63 - 2**32  # seed + image index must stay a valid torch seed
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


class UsageError(Exception):
    """Bad input found while running a command: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ("ddpmkit sample: error: ...") instead of usage and a message."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}; see `{self.prog} --help`")


# -- argument types ----------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed_int(text: str) -> int:
    """An argparse type: a seed in [0, MAX_SEED]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED}, got {value}")
    return value


# -- options shared by several subcommands -----------------------------------------------------------------------


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="a pipeline folder written by save_pretrained (or train.py)"
    )


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="where to run: cpu, cuda, cuda:1, mps, ... (default: cuda when available)"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="precision of the UNet (default: %(default)s)"
    )


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        default="ddpm",
        choices=SCHEDULERS,
        help="ddpm: the folder's own DDPM sampler; ddim: DDIM (eta 0); dpmsolver: DPM-Solver++ (default: ddpm)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="denoising steps (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")",
    )
    parser.add_argument(
        "--seed",
        type=seed_int,
        default=None,
        metavar="S",
        help="image i is drawn with seed S + i, so images do not depend on --batch_size (default: a random S, "
        "printed)",
    )
    parser.add_argument("--scale", type=positive_int, default=1, help="enlarge every image N times in the pictures")


# -- subcommand: sample ------------------------------------------------------------------------------------------


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample",
        help="generate images and save them as a grid (and one file each)",
        description="Generate images with a pipeline folder and save them as one grid PNG and, with --out_dir, "
        "as one PNG per image.",
        epilog="example: ddpmkit sample --model mnist-pipeline --scheduler ddim --num_images 16 --seed 0",
    )
    _add_model(parser)
    parser.add_argument("--num_images", type=positive_int, default=64, help="images to generate (default: 64)")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="images generated at once (default: 32)")
    _add_sampling(parser)
    parser.add_argument("--out", default="samples.png", help="the grid picture (default: %(default)s)")
    parser.add_argument(
        "--out_dir",
        default=None,
        metavar="DIR",
        help="also save each image as DIR/<scheduler><steps>_seed<seed>.png",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace images already in --out_dir (refused otherwise)"
    )
    _add_runtime(parser)
    _add_quiet(parser)
    parser.set_defaults(run=run_sample)
    return parser


def run_sample(args: argparse.Namespace) -> int:
    steps = args.steps or DEFAULT_STEPS[args.scheduler]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    out = _check_output_file(args.out)
    names = [f"{args.scheduler}{steps}_seed{seed + i}.png" for i in range(args.num_images)]
    out_dir = None
    if args.out_dir is not None:
        out_dir = _check_output_dir(args.out_dir)
        taken = [name for name in names if (out_dir / name).exists()]
        if taken and not args.overwrite:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise UsageError(
                f"--out_dir {args.out_dir} already holds {taken[0]}{more}; pass --overwrite, another --seed or "
                "another --out_dir"
            )
    pipe = _load_pipeline(args)
    _check_steps(pipe, steps)

    import torch
    from tqdm.auto import tqdm

    from .images import image_grid, to_pil_images

    start = time.perf_counter()
    images = []
    batches = range(0, args.num_images, args.batch_size)
    bar = tqdm(total=args.num_images, unit="img", desc="sampling", disable=args.quiet or len(batches) == 1)
    for first in batches:
        count = min(args.batch_size, args.num_images - first)
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(count)]
        batch = _sample(pipe, args, count, generators, steps).images
        batch = to_pil_images(batch)
        if out_dir is not None:
            for i, image in enumerate(batch):
                _save(image, out_dir / names[first + i])
        images.extend(batch)
        bar.update(count)
    bar.close()
    seconds = time.perf_counter() - start
    grid = image_grid(images, scale=args.scale)
    _save(grid, out)
    where = f" and {args.num_images} files in {out_dir}" if out_dir is not None else ""
    print(
        f"wrote {out}{where}: {args.num_images} images, {args.scheduler} {steps} steps, seed {seed}, "
        f"{seconds:.1f} s on {pipe.device}"
    )
    return 0


# -- subcommand: trajectory --------------------------------------------------------------------------------------


def add_trajectory_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "trajectory",
        help="picture the denoising process of a few samples, as a PNG and an animated GIF",
        description="Generate a few samples and save their denoising process: a picture with a row per sample and "
        "a column per evenly spaced step, from pure noise to the image (with --show_x0, each x_t row has the "
        "model's estimate of the final image beneath it), and an animated GIF.",
        epilog="example: ddpmkit trajectory --model mnist-pipeline --num_samples 4 --num_frames 10 --show_x0",
    )
    _add_model(parser)
    parser.add_argument("--num_samples", type=positive_int, default=4, help="rows of the picture (default: 4)")
    parser.add_argument(
        "--num_frames",
        type=positive_int,
        default=10,
        help="columns of the picture, pure noise first and the final image last (default: 10)",
    )
    parser.add_argument(
        "--gif_frames", type=positive_int, default=50, help="frames of the GIF, at most steps + 1 (default: 50)"
    )
    parser.add_argument(
        "--show_x0", action="store_true", help="also show the predicted x_0 at each step (ddpm and ddim only)"
    )
    _add_sampling(parser)
    parser.add_argument("--out", default="trajectory.png", help="the picture (default: %(default)s)")
    parser.add_argument("--gif", default=None, help="the animation (default: --out with the suffix .gif)")
    _add_runtime(parser)
    _add_quiet(parser)
    parser.set_defaults(run=run_trajectory)
    return parser


def run_trajectory(args: argparse.Namespace) -> int:
    steps = args.steps or DEFAULT_STEPS[args.scheduler]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.num_frames < 2:
        raise UsageError(f"--num_frames must be at least 2 (pure noise and the final image), got {args.num_frames}")
    if args.num_frames > steps + 1:
        raise UsageError(
            f"--num_frames {args.num_frames} needs at least {args.num_frames - 1} steps, got --steps {steps}; "
            "lower --num_frames or raise --steps"
        )
    if args.show_x0 and args.scheduler == "dpmsolver":
        raise UsageError("--show_x0 needs a scheduler that predicts x_0 at every step; use --scheduler ddpm or ddim")
    out = _check_output_file(args.out)
    gif = _check_output_file(args.gif or str(Path(args.out).with_suffix(".gif")), suffixes=(".gif",))
    pipe = _load_pipeline(args)
    _check_steps(pipe, steps)

    import numpy as np
    import torch

    from .images import save_gif, trajectory_frames, trajectory_picture
    from .pipelines import DenoisingTrajectory

    # column k shows the input of step k; column `steps` is the final image
    columns = np.linspace(0, steps, args.num_frames).round().astype(int).tolist()
    gif_columns = np.unique(np.linspace(0, steps, min(args.gif_frames, steps + 1)).round().astype(int)).tolist()
    recorded = sorted({c for c in columns + gif_columns if c < steps})
    generators = [torch.Generator().manual_seed(seed + i) for i in range(args.num_samples)]
    start = time.perf_counter()
    result = _sample(pipe, args, args.num_samples, generators, steps, trajectory_steps=recorded)
    seconds = time.perf_counter() - start
    trajectory = result.trajectory

    def select(wanted: list[int]) -> DenoisingTrajectory:
        rows = [recorded.index(c) for c in wanted if c < steps]
        x0 = trajectory.pred_original_samples
        return DenoisingTrajectory(
            [trajectory.timesteps[r] for r in rows], trajectory.samples[rows], None if x0 is None else x0[rows]
        )

    picture = trajectory_picture(select(columns), result.images, show_x0=args.show_x0, scale=args.scale)
    _save(picture, out)
    frames = trajectory_frames(select(gif_columns), result.images, show_x0=args.show_x0, scale=args.scale)
    _save_frames(save_gif, frames, gif)
    timesteps = [str(trajectory.timesteps[recorded.index(c)]) for c in columns if c < steps] + ["final"]
    print(
        f"wrote {out} and {gif} ({len(frames)} frames): {args.num_samples} samples, {args.scheduler} {steps} steps, "
        f"seed {seed}, {seconds:.1f} s on {pipe.device}; columns t = {', '.join(timesteps)}"
    )
    return 0


# -- subcommand: preview -----------------------------------------------------------------------------------------


def add_preview_parser(subparsers) -> argparse.ArgumentParser:
    from .data import add_dataset_args

    parser = subparsers.add_parser(
        "preview",
        help="save a 10x10 grid of random training images",
        description="Save a grid of random images of a training dataset (same dataset options as training), to "
        "check what the model will learn from.",
        epilog="example: ddpmkit preview --dataset mnist --out mnist.png",
    )
    add_dataset_args(parser)
    parser.add_argument("--out", default="preview.png", help="the grid picture (default: %(default)s)")
    parser.add_argument("--nrow", type=positive_int, default=10, help="images per row and column (default: 10)")
    parser.add_argument("--seed", type=seed_int, default=0, help="which random images (default: 0)")
    _add_quiet(parser)
    parser.set_defaults(run=run_preview)
    return parser


def run_preview(args: argparse.Namespace) -> int:
    from .data import dataset_from_args, save_preview_grid

    out = _check_output_file(args.out)
    import datasets

    bars = datasets.is_progress_bar_enabled()
    if args.quiet:
        datasets.disable_progress_bars()
    try:
        dataset = dataset_from_args(args)
    except (ValueError, OSError) as e:
        raise UsageError(_one_line(e)) from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    try:
        save_preview_grid(dataset, out, nrow=args.nrow, seed=args.seed)
    except ValueError as e:
        raise UsageError(_one_line(e)) from None
    except OSError as e:
        raise UsageError(f"could not write {out}: {_one_line(e)}") from None
    print(f"wrote {out}: {min(args.nrow**2, len(dataset))} of {len(dataset)} images")
    return 0


# -- subcommand: convert-tutorial --------------------------------------------------------------------------------


def add_convert_tutorial_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert-tutorial",
        help="convert a checkpoint of the original tutorial into a pipeline folder",
        description="Convert a checkpoint saved by the original tutorial's train.py (torch.save of the UNet) into "
        "a pipeline folder of safetensors and JSON, with the tutorial's sampler.",
        epilog="example: ddpmkit convert-tutorial model/PTH/number_model.pt --out mnist-pipeline --allow-pickle",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the tutorial's .pt file")
    parser.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    parser.add_argument(
        "--allow-pickle",
        "--allow_pickle",
        dest="allow_pickle",
        action="store_true",
        help="the tutorial saved whole pickled models, which can run code when loaded: pass this only for a file "
        "you trust",
    )
    parser.add_argument(
        "--sample_size",
        type=positive_int,
        default=None,
        help="the image size the model was trained at (the tutorial's IMG_SIZE; default: 32)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    _add_quiet(parser)
    parser.set_defaults(run=run_convert_tutorial)
    return parser


def run_convert_tutorial(args: argparse.Namespace) -> int:
    from .convert import convert_tutorial_checkpoint

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint {checkpoint} is not a file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder to write the pipeline into")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite or name a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {_one_line(e)}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out} is not writable")
    try:
        size = {} if args.sample_size is None else {"sample_size": args.sample_size}
        pipe = convert_tutorial_checkpoint(checkpoint, out, allow_pickle=args.allow_pickle, **size)
    except (ValueError, OSError) as e:
        raise UsageError(_one_line(e)) from None
    unet = pipe.unet.config
    print(
        f"wrote {out}: {type(pipe.unet).__name__} {unet.in_channels} channel(s) {unet.sample_size}px, "
        f"{type(pipe.scheduler).__name__}; try `ddpmkit sample --model {out}`"
    )
    return 0


# -- subcommand: info --------------------------------------------------------------------------------------------


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="describe a pipeline folder without loading its weights",
        description="Describe a pipeline folder: its components, the UNet's config and parameter count (read from "
        "the safetensors header, no weights are loaded), the scheduler, and the training metadata of its model "
        "card (README.md) if there is one.",
        epilog="example: ddpmkit info --model mnist-pipeline",
    )
    _add_model(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _add_quiet(parser)
    parser.set_defaults(run=run_info)
    return parser


def run_info(args: argparse.Namespace) -> int:
    from .loading import check_model_index, read_json

    root = _check_model_folder(args.model)
    try:
        index = read_json(root / "model_index.json")
        classes = check_model_index(index)
        info: dict = {"folder": str(root), "pipeline": index.get("_class_name"), "components": {}}
        for name, cls in sorted(classes.items(), key=lambda item: item[0] != "unet"):
            folder = root / name
            config_name = getattr(cls, "config_name", "config.json")
            entry = {"class": f"{cls.__module__.split('.')[0]}.{cls.__name__}"}
            entry["config"] = {k: v for k, v in read_json(folder / config_name).items() if not k.startswith("_")}
            weights = folder / "diffusion_pytorch_model.safetensors"
            if weights.is_file():
                entry["weights"] = _safetensors_summary(weights)
            info["components"][name] = entry
        card = root / "README.md"
        if card.is_file():
            info["card"] = _card_summary(card)
    except (ValueError, OSError) as e:
        raise UsageError(_one_line(e)) from None
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"folder      {root}")
    print(f"pipeline    {info['pipeline']}")
    for name, entry in info["components"].items():
        print(f"{name:<11} {entry['class']}")
        weights = entry.get("weights")
        if weights:
            dtypes = "/".join(weights["dtypes"])
            print(
                f"{'':<11} {weights['parameters']:,} parameters ({dtypes}, {_size(weights['bytes'])} in "
                f"{weights['file']})"
            )
        for key, value in entry["config"].items():
            print(f"{'':<11}   {key} = {json.dumps(value)}")
    if "card" in info:
        print("card        README.md" + ("" if info["card"] else " (no training metadata)"))
        for section, values in info["card"].items():
            if not isinstance(values, dict):
                print(f"{'':<11} {section}: {values}")
                continue
            print(f"{'':<11} {section}:")
            for key, value in values.items():
                shown = value if isinstance(value, str) else json.dumps(value, default=str)
                print(f"{'':<11}   {key} = {shown}")
    return 0


def _safetensors_summary(path: Path) -> dict:
    """Parameter count, dtypes and size of a safetensors file, read from its header alone."""
    from .loading import CorruptFolderError

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptFolderError(f"{path} is truncated (no safetensors header)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(SAFETENSORS_MAX_HEADER, size - 8):
            raise CorruptFolderError(f"{path} has a header of {length} bytes in a file of {size}; it is damaged")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptFolderError(f"{path} has an unreadable header; the file is damaged") from None
    if not isinstance(header, dict):
        raise CorruptFolderError(f"{path} has an unreadable header; the file is damaged")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        parameters = sum(math.prod(v["shape"]) for v in tensors.values())
        dtypes = sorted({v["dtype"] for v in tensors.values()})
    except (TypeError, KeyError):
        raise CorruptFolderError(f"{path} has a malformed header; the file is damaged") from None
    return {"file": path.name, "bytes": size, "tensors": len(tensors), "parameters": parameters, "dtypes": dtypes}


def _card_summary(path: Path) -> dict:
    """What a model card (README.md) says about training: its YAML metadata, the training command, and the
    two-column tables (hyperparameters, metrics) under their headings."""
    from huggingface_hub.repocard import metadata_load

    summary: dict = {}
    try:
        metadata = metadata_load(path) or {}
    except Exception as e:  # a broken card must not hide the rest of the folder's description
        metadata = {"unreadable": f"{type(e).__name__}: {_one_line(e)}"}
    if metadata:
        summary["metadata"] = metadata
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---"):
        text = text.split("\n---", 1)[-1]
    heading, in_code, table_header = None, False, False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            if heading and "train" in heading.lower() and stripped:
                summary["training command"] = " ".join(filter(None, [summary.get("training command"), stripped]))
            continue
        if stripped.startswith("#"):
            heading, table_header = stripped.lstrip("#").strip(), True
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", stripped.strip("|"))] if stripped.startswith("|") else []
        if len(cells) != 2 or heading is None:
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if table_header:  # the table's first row names its columns
            table_header = False
            continue
        summary.setdefault(heading, {})[cells[0]] = cells[1].replace("\\|", "|")
    return summary


# -- the command -------------------------------------------------------------------------------------------------

def add_evaluate_parser(subparsers):
    from .evaluation import add_evaluate_parser

    return add_evaluate_parser(subparsers)


def add_train_classifier_parser(subparsers):
    from .evaluation import add_train_classifier_parser

    return add_train_classifier_parser(subparsers)


SUBCOMMANDS = (
    add_sample_parser,
    add_trajectory_parser,
    add_preview_parser,
    add_evaluate_parser,
    add_train_classifier_parser,
    add_convert_tutorial_parser,
    add_info_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ddpmkit`` argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    from . import __version__

    parser = _Parser(
        prog="ddpmkit",
        description="Sample and inspect DDPM image generators saved as diffusers pipeline folders.",
        epilog="Run `ddpmkit <command> --help` for a command's options. Start with: ddpmkit sample --model DIR",
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``ddpmkit`` command with ``argv`` (default: ``sys.argv[1:]``) and returns its exit code."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            prog = f"ddpmkit {args.command}" if args.command else "ddpmkit"
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(unknown)}; see `{prog} --help`")
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()  # config notes about unused keys are not the user's concern
    diffusers_logging.disable_progress_bar()  # loading takes well under a second
    try:
        run = getattr(args, "run", None) or args.func  # `func`: subcommands defined outside this module
        return run(args)
    except UsageError as e:
        print(f"ddpmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpmkit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars:
            diffusers_logging.enable_progress_bar()


# -- helpers -----------------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_model_folder(model: str) -> Path:
    root = Path(model).expanduser()
    if not root.exists():
        raise UsageError(f"--model {model}: no such folder; pass a pipeline folder written by save_pretrained")
    if not root.is_dir():
        raise UsageError(f"--model {model} is a file, not a pipeline folder")
    if not (root / "model_index.json").is_file():
        raise UsageError(
            f"--model {model} is not a pipeline folder (it has no model_index.json); pass the folder that "
            "save_pretrained wrote"
        )
    return root


def _resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: ddpmkit runs on cpu, cuda or mps")
    return device


def _load_pipeline(args: argparse.Namespace):
    """The pipeline of ``--model`` on ``--device`` in ``--dtype``, with ``--scheduler`` swapped in."""
    import torch

    from .pipelines import DDPMPipeline

    root = _check_model_folder(args.model)
    device = _resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--dtype bfloat16 is not supported by {torch.cuda.get_device_name(device)}; use float16")
    try:
        pipe = DDPMPipeline.from_pretrained(root, dtype=dtype)
    except (ValueError, OSError) as e:
        raise UsageError(_one_line(e)) from None
    pipe = pipe.to(device)
    pipe.scheduler = _make_scheduler(pipe.scheduler, args.scheduler)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, desc="denoising")
    return pipe


def _make_scheduler(scheduler, name: str):
    """The scheduler that ``--scheduler name`` asks for, built from the folder's scheduler config."""
    from .pipelines.samplers import make_scheduler

    try:
        return make_scheduler(scheduler, name)
    except ValueError as e:
        raise UsageError(f"--scheduler {name!r}: {e}") from None


def _check_steps(pipe, steps: int) -> None:
    limit = pipe.scheduler.config.num_train_timesteps
    if steps > limit:
        raise UsageError(f"--steps {steps} is more than the {limit} timesteps this model was trained with")


def _sample(pipe, args: argparse.Namespace, count: int, generators: list, steps: int, **kwargs):
    try:
        return pipe(batch_size=count, generator=generators, num_inference_steps=steps, output_type="pt", **kwargs)
    except RuntimeError as e:
        if args.dtype != "float32":
            raise UsageError(
                f"sampling in --dtype {args.dtype} failed on {pipe.device} ({_one_line(e)}); use --dtype float32"
            ) from None
        raise


def _check_output_file(path: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Checks, before any work is done, that an image can be written to ``path`` (creating its folder)."""
    import PIL.Image

    out = Path(path).expanduser()
    if out.is_dir():
        raise UsageError(f"{path} is a folder; name a file to write")
    suffix = out.suffix.lower()
    allowed = suffixes or tuple(ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.SAVE)
    if suffix not in allowed:
        raise UsageError(
            f"cannot tell the image format of {path!r} from its extension; name it with one of "
            f"{', '.join(a for a in ('.png', '.gif', '.jpg', '.webp') if a in allowed) or ', '.join(allowed)}"
        )
    _check_output_dir(out.parent, label=f"the folder of {path}")
    return out


def _check_output_dir(path: str | Path, label: str | None = None) -> Path:
    folder = Path(path).expanduser()
    label = label or f"--out_dir {path}"
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"cannot create {label}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {label}: {_one_line(e)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{label} is not writable; choose another location")
    return folder


def _save(image, path: Path) -> None:
    try:
        image.save(path)
    except OSError as e:
        raise UsageError(f"could not write {path}: {_one_line(e)}") from None


def _save_frames(save_gif, frames, path: Path) -> None:
    try:
        save_gif(frames, path)
    except OSError as e:
        raise UsageError(f"could not write {path}: {_one_line(e)}") from None

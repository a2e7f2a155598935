"""What every subcommand shares: the one error type, the parser class, argument types, the shared flags
(``--quiet``, ``--device``, ``--dtype``, ``--num_threads``), the device check, pipeline loading and output checks."""

import argparse
import contextlib
import dataclasses
import types
import typing
from pathlib import Path

from ..pipelines.sampling import MAX_PIXELS, MAX_SEED, SAMPLERS

DTYPES = ("float32", "bfloat16", "float16")


class UsageError(Exception):
    """Bad input found while running a command: reported as one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ("ddpmkit sample: error: ...") instead of usage and a message."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}; see `{self.prog} --help`")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


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


# -- shared flags ------------------------------------------------------------------------------------------------


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="a pipeline folder written by save_pretrained or ddpmkit train"
    )


def add_runtime(parser: argparse.ArgumentParser, dtype_help: str = "precision of the UNet") -> None:
    parser.add_argument(
        "--device", default=None, help="where to run: cpu, cuda, cuda:1, mps, ... (default: cuda when available)"
    )
    parser.add_argument("--dtype", default=None, choices=DTYPES, help=f"{dtype_help} (default: float32)")
    parser.add_argument("--num_threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads (default: every core this process may use; beside another job, its "
                        "share of them)")  # fmt: skip


def add_sampling(parser: argparse.ArgumentParser, default: str = "ddim", choices: tuple = tuple(SAMPLERS)) -> None:
    parser.add_argument(
        "--scheduler",
        default=default,
        choices=choices,
        help="ddim: DDIM (eta 0); dpmsolver: DPM-Solver++; ddpm: the folder's own DDPM sampler, all its steps "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="denoising steps (default: " + ", ".join(f"{k} {v}" for k, v in SAMPLERS.items()) + ")",
    )
    parser.add_argument(
        "--seed",
        type=seed_int,
        default=None,
        metavar="S",
        help="image i is drawn with seed S + i, so images do not depend on --batch_size (default: a random S, "
        "printed)",
    )


def add_config_arguments(parser: argparse.ArgumentParser, cls, groups: tuple[str, ...] | None = None) -> None:
    """Flags for the fields of dataclass ``cls`` (their names, types, defaults and ``help`` metadata), grouped by
    their ``group`` metadata; only ``groups`` if given. (argparse has no dataclass support, and transformers'
    ``HfArgumentParser`` is not a dependency.)"""
    hints = typing.get_type_hints(cls)
    sections: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        group_name = f.metadata.get("group", "options")
        if groups is not None and group_name not in groups:
            continue
        group = sections.get(group_name) or sections.setdefault(group_name, parser.add_argument_group(group_name))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind, nargs, choices = _flag_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if kind is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            group.add_argument(f"--{f.name}", action=action, default=default, help=help_text)
            continue
        shown = "" if default is None else f" (default: {default})"
        group.add_argument(f"--{f.name}", type=kind, nargs=nargs, choices=choices, default=default,
                           help=help_text.replace("%", "%%") + shown)  # fmt: skip


def _flag_type(hint) -> tuple[type, str | None, tuple | None]:
    """(argparse type, nargs, choices) for a field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        values = typing.get_args(hint)
        return type(values[0]), None, values
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], "+", None
    return hint, None, None


# -- devices, pipelines, outputs ---------------------------------------------------------------------------------


def resolve_device(name: str | None):
    """The torch device ``--device`` names (default: cuda when available), or a :class:`UsageError`."""
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


def check_model_folder(model: str) -> Path:
    root = Path(model).expanduser()
    if not root.exists():
        raise UsageError(f"--model {model} is not a pipeline folder (no such folder); pass one save_pretrained wrote")
    if not root.is_dir():
        raise UsageError(f"--model {model} is a file, not a pipeline folder")
    if not (root / "model_index.json").is_file():
        raise UsageError(
            f"--model {model} is not a pipeline folder (it has no model_index.json); pass the folder that "
            "save_pretrained wrote"
        )
    return root


def load_pipeline(args: argparse.Namespace, scheduler: str | None = None):
    """The pipeline of ``--model`` on ``--device`` in ``--dtype``, with sampler ``scheduler`` swapped in."""
    import torch

    from ..pipelines import DDPMPipeline
    from ..pipelines.sampling import with_sampler

    root = check_model_folder(args.model)
    device = resolve_device(args.device)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    dtype = getattr(torch, args.dtype or "float32")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--dtype bfloat16 is not supported by {torch.cuda.get_device_name(device)}; use float16")
    try:
        pipe = DDPMPipeline.from_pretrained(root, dtype=dtype)
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe = with_sampler(pipe, scheduler)
    except ValueError as e:
        raise UsageError(f"--scheduler {scheduler!r}: {e}") from None
    return pipe


def check_steps(pipe, steps: int) -> None:
    limit = pipe.scheduler.config.num_train_timesteps
    if steps > limit:
        raise UsageError(f"--steps {steps} is more than the {limit} timesteps this model was trained with")


def check_allocation(pipe, images: int, what: str, scale: int = 1) -> None:
    """Refuses, before any work, a sampling run (or a picture) whose images alone would not fit in memory."""
    config = pipe.unet.config
    size = (config.sample_size if isinstance(config.sample_size, int) else max(config.sample_size)) * scale
    pixels = images * config.in_channels * size * size
    if pixels > MAX_PIXELS:
        raise UsageError(
            f"{what} asks for {images} images of {config.in_channels}x{size}x{size} at once ({pixels * 4 / 2**30:.0f} "
            "GiB); use fewer images at a time"
        )


def check_output_file(path: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Checks, before any work is done, that an image can be written to ``path`` (creating its folder)."""
    import PIL.Image

    out = Path(path).expanduser()
    if out.is_dir():
        raise UsageError(f"{path} is a folder; name a file to write")
    suffix = out.suffix.lower()
    allowed = suffixes or (".png", ".jpg", ".jpeg", ".webp")
    allowed = tuple(a for a in allowed if PIL.Image.registered_extensions().get(a) in PIL.Image.SAVE)
    if suffix not in allowed:
        raise UsageError(
            f"cannot tell the image format of {path!r} from its extension; name it with one of {', '.join(allowed)}"
        )
    check_output_dir(out.parent, label=f"the folder of {path}")
    return out


def check_output_dir(path: str | Path, label: str | None = None) -> Path:
    from ..utils.io import make_writable_folder

    try:
        return make_writable_folder(path, label or f"--out_dir {path}")
    except ValueError as e:
        raise UsageError(str(e)) from None


def save_image(image, path: Path, **kwargs) -> None:
    from ..utils.io import atomic_save_image

    try:
        atomic_save_image(image, path, **kwargs)
    except OSError as e:
        raise UsageError(f"could not write {path}: {one_line(e)}") from None


@contextlib.contextmanager
def quiet_libraries(quiet: bool):
    """No progress bars from datasets while loading data when ``quiet``; restored afterwards."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()

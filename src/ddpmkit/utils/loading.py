"""The checks of a pipeline folder that trust nothing they read.

Pipeline folders come from strangers. Before diffusers builds anything, the folder is checked here:
``model_index.json`` may only name ``ddpmkit`` and ``diffusers`` classes, weights must be safetensors (pickles only
with ``allow_pickle=True``), configs must be valid JSON with known keys, weights must match the config, and no file
may be a link out of the folder. Every failure is one :class:`UnsafeFolderError` (a ``ValueError``) or
:class:`CorruptFolderError` (an ``OSError``) that names the file and the fix.
"""

import inspect
import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

ALLOWED_LIBRARIES = ("ddpmkit", "diffusers")
SAFE_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.pt")
CONFIG_FILES = ("config.json", "scheduler_config.json")
MAX_JSON_BYTES = 1 << 20


class UnsafeFolderError(ValueError):
    """A folder asks for something ddpmkit will not do: import foreign code, unpickle, or read outside itself."""


class CorruptFolderError(OSError):
    """A folder is incomplete or damaged: a missing, truncated or malformed file, or weights that do not fit."""


def read_json(path: str | os.PathLike) -> dict:
    """Reads a JSON object, turning every way it can be broken into one :class:`CorruptFolderError`."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFolderError(f"{path} is missing; is this a folder written by save_pretrained?")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CorruptFolderError(f"{path} is {path.stat().st_size} bytes, too large for a config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: also integers of thousands of digits
        raise CorruptFolderError(f"{path} is not valid JSON ({e}); re-save the folder with save_pretrained") from None
    except RecursionError:
        raise CorruptFolderError(f"{path} is nested too deeply to be a config; re-save the folder") from None
    if not isinstance(data, dict):
        raise CorruptFolderError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_local_tree(root: Path) -> None:
    """Refuses links that lead out of ``root`` (or nowhere): a shared folder must not make ddpmkit read elsewhere."""
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath, entry)
            if not path.is_symlink():
                continue
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
                raise CorruptFolderError(
                    f"{path} is a broken link or a link loop (to {os.readlink(path)}); replace it with the file"
                ) from None
            if not target.is_relative_to(real_root):
                raise UnsafeFolderError(f"{path} is a link to {os.readlink(path)}, outside {root}; copy the file in")


def check_no_folder_code(root: Path, index: dict) -> None:
    """Refuses the Python files diffusers would run while loading ``root``: ``<name>.py`` for a ``_class_name`` of
    ``[name, class]``, and ``<component>/<library>.py`` for each component."""
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            continue
        code = root / name / f"{entry[0]}.py"
        if code.exists() or code.is_symlink():
            raise UnsafeFolderError(
                f"{code} is code that diffusers would run to load {name!r}; ddpmkit never runs code from a folder: "
                "delete the file"
            )


def check_component_folder(folder: Path, cls: type, allow_pickle: bool) -> None:
    """Checks one component folder (``unet/``, ``scheduler/``) before ``cls`` loads it."""
    from diffusers import ModelMixin

    if not folder.is_dir():
        raise CorruptFolderError(f"{folder} is missing: model_index.json lists it as a component")
    config_path = folder / getattr(cls, "config_name", "config.json")
    config = read_json(config_path)
    # built once on the meta device, which validates the config and gives the expected weights
    if cls.__module__.startswith("ddpmkit"):
        meta_instance = _check_config(config_path, config, cls)
    else:
        meta_instance = _check_diffusers_config(config_path, config, cls)
    if not issubclass(cls, ModelMixin):
        return
    weights = folder / SAFE_WEIGHTS
    if not weights.is_file():
        pickles = [p for p in PICKLE_WEIGHTS if (folder / p).is_file()]
        if pickles and not allow_pickle:
            raise UnsafeFolderError(
                f"{folder} holds only pickled weights ({pickles[0]}), which can run code when loaded; convert them "
                "to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust the file"
            )
        if not pickles:
            raise CorruptFolderError(f"{folder} has no weights file {SAFE_WEIGHTS}")
        return
    expected = None if meta_instance is None else {k: tuple(v.shape) for k, v in meta_instance.state_dict().items()}
    check_safetensors(weights, expected)


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, dtype) of a safetensors file, read from its header alone (safetensors checks that the
    header fits the file, which catches truncation)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {}
            for key in f.keys():
                piece = f.get_slice(key)
                header[key] = (tuple(piece.get_shape()), str(piece.get_dtype()))
    except (SafetensorError, OSError, ValueError, RecursionError) as e:
        raise CorruptFolderError(
            f"{path} is not a readable safetensors file ({e}); the file is truncated or damaged"
        ) from None
    return header


def check_safetensors(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> None:
    """Reads the safetensors header and, given the ``expected`` name -> shape of the model the config describes,
    checks every tensor against it, so a mismatch never gives a half-loaded model; weights must be floats."""
    header = read_safetensors_header(path)
    shapes = {key: shape for key, (shape, _) in header.items()}
    odd = sorted(key for key, (_, dtype) in header.items() if dtype.upper() not in FLOAT_DTYPES)
    if odd:
        raise CorruptFolderError(
            f"{path} holds {header[odd[0]][1]} weights ({odd[0]}); a UNet's weights are floating point: re-save them"
        )
    if expected is None:
        return
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & shapes.keys() if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CorruptFolderError(
            f"{path} does not match its config.json: {', '.join(details)}; the weights belong to another model"
        )


def _check_config(path: Path, config: dict, cls: type):
    """Unknown keys and bad values of a ddpmkit class's config fail here, naming the file; returns ``cls`` built
    from it on the meta device (no memory allocated).

    diffusers classes keep diffusers' own, lenient handling."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(kwargs.keys() - accepted)
    if unknown:
        raise CorruptFolderError(
            f"{path} has unknown keys {unknown} for {cls.__name__}; remove them (accepted: {sorted(accepted)})"
        )
    import torch

    try:
        with torch.device("meta"):  # validates every value without allocating
            return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UnsafeFolderError(f"{path}: {e}") from None


MAX_TRAIN_TIMESTEPS = 100_000
MAX_SAMPLE_SIZE = 8192
MAX_PARAMETERS = 2_000_000_000


def _check_diffusers_config(path: Path, config: dict, cls: type):
    """The bounds ddpmkit's own classes hold, for a diffusers class's config, checked before anything is built
    (diffusers would allocate what the file asks for); a model is returned built on the meta device."""
    import math

    from diffusers import ModelMixin, SchedulerMixin

    def refuse(message: str):
        raise UnsafeFolderError(f"{path}: {message}")

    if issubclass(cls, SchedulerMixin):
        steps = config.get("num_train_timesteps", 1000)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
            refuse(f"num_train_timesteps must be an integer in [1, {MAX_TRAIN_TIMESTEPS}], got {steps!r}")
        betas = config.get("trained_betas")
        if betas is not None:
            if not isinstance(betas, list) or len(betas) != steps:
                refuse(f"trained_betas must be a list of num_train_timesteps={steps} values")
            if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas):
                refuse("trained_betas must all lie in (0, 1)")
        else:
            start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end))
            if not numbers or not all(math.isfinite(v) for v in (start, end)) or not 0 < start <= end < 1:
                refuse(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {start!r}, {end!r}")
        return None
    if issubclass(cls, ModelMixin):
        size = config.get("sample_size")
        sizes = size if isinstance(size, list) else [size]
        for value in sizes:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_SAMPLE_SIZE):  # fmt: skip
                refuse(f"sample_size must be an integer in [1, {MAX_SAMPLE_SIZE}], got {size!r}")
        channels = config.get("block_out_channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, int) and 0 < c <= 16384 for c in channels):
            refuse(f"block_out_channels must be a list of channel counts in [1, 16384], got {channels!r}")
        layers = config.get("layers_per_block", 2)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= 64:
            refuse(f"layers_per_block must be an integer in [1, 64], got {layers!r}")
        # a cheap upper estimate first (each block's convolutions), so that no object is made for absurd sizes
        estimate = sum(9 * c * c * (2 * layers + 2) for c in channels)
        if estimate > 4 * MAX_PARAMETERS:
            refuse(f"block_out_channels {channels} give about {estimate / 1e9:.0f}B parameters; the limit is 2B")
        import torch

        try:
            with torch.device("meta"):
                model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        except Exception as e:  # diffusers raises many kinds of errors for a config it cannot build
            refuse(f"not a valid {cls.__name__} config ({type(e).__name__}: {e})")
        parameters = sum(p.numel() for p in model.parameters())
        if parameters > MAX_PARAMETERS:
            refuse(f"the model has {parameters / 1e9:.1f}B parameters; the limit is {MAX_PARAMETERS / 1e9:.0f}B")
        return model
    return None



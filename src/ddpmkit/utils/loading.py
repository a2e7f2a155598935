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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFolderError(f"{path} is not valid JSON ({e}); re-save the folder with save_pretrained") from None
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
    # ddpmkit classes: built once on the meta device, which validates the config and gives the expected weights
    meta_instance = _check_config(config_path, config, cls) if cls.__module__.startswith("ddpmkit") else None
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
        raise ValueError(f"{path}: {e}") from None



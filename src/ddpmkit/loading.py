"""Loading that trusts nothing it reads.

Pipeline folders come from strangers. Before diffusers builds anything, the folder is checked here:
``model_index.json`` may only name ``ddpmkit`` and ``diffusers`` classes, weights must be safetensors (pickles only
with ``allow_pickle=True``), configs must be valid JSON with known keys, weights must match the config, and no file
may be a link out of the folder. Every failure is one :class:`UnsafeFolderError` (a ``ValueError``) or
:class:`CorruptFolderError` (an ``OSError``) that names the file and the fix.
"""

import inspect
import json
import os
from collections.abc import Callable
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


def resolve_component_class(name: str, entry) -> type | None:
    """The class a ``model_index.json`` entry names, refusing any library but ddpmkit and diffusers.

    Nothing is imported on the folder's word: a ddpmkit class must be one ddpmkit exports, a diffusers class one
    diffusers exports, and either must be a model or a scheduler (a nested pipeline would read its own, unchecked
    ``model_index.json``)."""
    if entry == [None, None]:  # diffusers' mark of an absent optional component
        return None
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise CorruptFolderError(f"model_index.json entry {name!r} must be [library, class name], got {entry!r}")
    library, class_name = entry
    named = repr(f"{library}.{class_name}")  # quoted and escaped: the names come from the file
    if library.split(".")[0] not in ALLOWED_LIBRARIES:
        raise UnsafeFolderError(
            f"model_index.json names {named} for {name!r}; ddpmkit only builds classes from "
            f"{' and '.join(ALLOWED_LIBRARIES)} and never imports code a folder names"
        )
    if library.split(".")[0] == "ddpmkit":
        import ddpmkit

        cls = getattr(ddpmkit, class_name, None) if class_name in ddpmkit.__all__ else None
        # the saved module path (ddpmkit.models.unet_conv) or a package above it (ddpmkit.models, ddpmkit)
        if isinstance(cls, type) and not (cls.__module__ + ".").startswith(library + "."):
            cls = None
    else:
        import diffusers

        cls = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    if not isinstance(cls, type):
        raise UnsafeFolderError(f"model_index.json names {named} for {name!r}, which does not exist")
    from diffusers import ModelMixin, SchedulerMixin

    if not issubclass(cls, (ModelMixin, SchedulerMixin)):
        raise UnsafeFolderError(
            f"model_index.json names {named} for {name!r}, which is not a model or a scheduler; "
            "a pipeline component must be one"
        )
    return cls


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


def check_safetensors(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> None:
    """Opens the safetensors header (which catches truncation) and, given the ``expected`` name -> shape of the
    model the config describes, checks every tensor against it, so a mismatch never gives a half-loaded model."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFolderError(
            f"{path} is not a readable safetensors file ({e}); the file is truncated or damaged"
        ) from None
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


def resolve_pretrained_folder(
    path_or_repo: str | os.PathLike, allow_pickle: bool, hub_kwargs: dict
) -> tuple[Path, bool]:
    """A local folder as it is, or a Hub repo downloaded (JSON and weights only) after its index is checked.

    Returns the folder and whether it is the user's own local folder (links are checked there)."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path, True
    if path.exists() or str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") > 1:
        raise CorruptFolderError(f"{path_or_repo} is not a pipeline folder (no such directory)")
    from huggingface_hub import hf_hub_download, snapshot_download

    keys = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")
    kwargs = {k: hub_kwargs[k] for k in keys if k in hub_kwargs}
    index_file = hf_hub_download(str(path_or_repo), "model_index.json", **kwargs)
    check_model_index(read_json(index_file))
    patterns = ["*.json", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    return Path(snapshot_download(str(path_or_repo), allow_patterns=patterns, **kwargs)), False


def check_model_index(index: dict) -> dict[str, type]:
    """The classes of a pipeline's components, each one allowed by :func:`resolve_component_class`."""
    class_name = index.get("_class_name")
    if isinstance(class_name, list):
        raise UnsafeFolderError(
            f"model_index.json has _class_name {class_name!r}; a [file, class] pair asks to run code from the "
            "folder, which ddpmkit never does: use the pipeline class name"
        )
    if not isinstance(class_name, str):
        raise CorruptFolderError(f"model_index.json must name the pipeline class in _class_name, got {class_name!r}")
    components = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        cls = resolve_component_class(name, entry)
        if cls is not None:
            components[name] = cls
    return components


# diffusers options that load code (from the folder, the Hub or the community pipelines) or skip the checks here
REFUSED_OPTIONS = ("trust_remote_code", "custom_pipeline", "custom_revision", "variant", "dduf_file")


def load_pipeline_safely(
    load: Callable, pipeline_cls: type, path_or_repo, allow_pickle: bool, kwargs: dict
):  # -> DiffusionPipeline
    """Checks a pipeline folder, then has diffusers' ``from_pretrained`` (``load``) build it."""
    refused = [k for k in REFUSED_OPTIONS if kwargs.get(k) not in (None, False)]
    if refused:
        raise UnsafeFolderError(
            f"{refused[0]}={kwargs[refused[0]]!r} is not supported: ddpmkit loads JSON and safetensors only, never "
            "code from a folder or the Hub, and no weight variants; drop the option"
        )
    allow_pickle = allow_pickle or kwargs.get("use_safetensors", True) is not True  # as ConvUNet2DModel does
    root, is_local = resolve_pretrained_folder(path_or_repo, allow_pickle, kwargs)
    if is_local:
        check_local_tree(root)
    index = read_json(root / "model_index.json")
    components = check_model_index(index)
    check_no_folder_code(root, index)
    expected = set(inspect.signature(pipeline_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(components) - expected)
    if unknown:
        raise CorruptFolderError(
            f"{root / 'model_index.json'} lists components {unknown} that {pipeline_cls.__name__} does not take "
            f"(it takes {sorted(expected)})"
        )
    absent = sorted(expected - set(components) - set(kwargs))
    if absent:
        raise CorruptFolderError(
            f"{root / 'model_index.json'} lacks the components {absent} that {pipeline_cls.__name__} needs; pass "
            f"them to from_pretrained (e.g. {absent[0]}=...) or re-save the folder"
        )
    for name, cls in components.items():
        # a component passed in by the caller is not read from disk; ddpmkit models check their own folder
        if name not in kwargs and not getattr(cls, "checks_own_folder", False):
            check_component_folder(root / name, cls, allow_pickle)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("force_download", "proxies")}
    kwargs.setdefault("use_safetensors", None if allow_pickle else True)
    try:
        return load(str(root), **kwargs)
    except (SafetensorError, RuntimeError, json.JSONDecodeError) as e:
        raise CorruptFolderError(f"could not load the pipeline in {root}: {e}") from e

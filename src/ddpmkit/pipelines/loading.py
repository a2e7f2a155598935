"""Building a pipeline from a folder that trusts nothing it reads: :func:`load_pipeline_safely` checks the folder
with :mod:`ddpmkit.utils.loading` and builds only ``ddpmkit`` and ``diffusers`` classes named in
``model_index.json``, never code the folder names."""

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from ..utils.loading import (
    ALLOWED_LIBRARIES,
    CorruptFolderError,
    UnsafeFolderError,
    check_component_folder,
    check_local_tree,
    check_no_folder_code,
    read_json,
)


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
        if not name.isidentifier():
            raise UnsafeFolderError(
                f"model_index.json names a component {name!r}; component names are plain folder names (unet, "
                "scheduler), never paths"
            )
        cls = resolve_component_class(name, entry)
        if cls is not None:
            components[name] = cls
    return components


def check_roles(components: dict[str, type]) -> None:
    """Each component's class must be able to play its part: the ``unet`` a UNet the pipeline calls as
    ``unet(x_t, t)``, the ``scheduler`` one that steps from a DDPM config."""
    from ..schedulers import LinearDDPMScheduler

    unets = ("ConvUNet2DModel", "UNet2DModel")
    schedulers = (LinearDDPMScheduler.__name__, *LinearDDPMScheduler._compatibles)
    for name, allowed in (("unet", unets), ("scheduler", schedulers)):
        cls = components.get(name)
        if cls is not None and cls.__name__ not in allowed:
            raise UnsafeFolderError(
                f"model_index.json names {cls.__name__} as the {name}, which cannot be one; use one of "
                f"{', '.join(sorted(allowed))}"
            )


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
    check_roles(components)
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

"""Training images: dataset presets, loading from the Hub, local Parquet/Arrow files or a folder, and a tensor cache.

Images are decoded, converted and resized once into a ``uint8`` tensor ``(N, C, H, W)`` and cached on disk as
safetensors, so training never waits on JPEG/PNG decoding and a second run does not decode again.

>>> ds = load_image_dataset(dataset="mnist", train_data_files="../shared/data/mnist/train.parquet")  # doctest: +SKIP
>>> ds.images.shape, ds[0].min() >= -1  # doctest: +SKIP
(torch.Size([60000, 1, 32, 32]), tensor(True))
"""

import errno
import hashlib
import io
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .utils.cache import cache_root as cache_root_of
from .utils.images import image_grid
from .utils.io import atomic_save_image, atomic_write_bytes

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: class names in the metadata
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
MAX_RESOLUTION = 4096


@dataclass(frozen=True)
class DatasetPreset:
    """A named dataset: its Hub id, the columns that hold the images (and labels), and the size of its images
    where they all share one."""

    hub_id: str
    image_column: str
    label_column: str | None = None
    config_name: str | None = None
    native_resolution: int | None = None


DATASET_PRESETS: dict[str, DatasetPreset] = {
    "mnist": DatasetPreset("ylecun/mnist", "image", "label", native_resolution=28),
    "fashion_mnist": DatasetPreset("zalando-datasets/fashion_mnist", "image", "label", native_resolution=28),
    "cifar10": DatasetPreset("uoft-cs/cifar10", "img", "label", native_resolution=32),
    "flowers102": DatasetPreset("huggan/flowers-102-categories", "image", None),
}


class ImageTensorDataset(torch.utils.data.Dataset):
    """All training images as one ``uint8`` tensor, mapped to float ``[-1, 1]`` when read.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: optional ``(N,)`` int64 tensor.
        source: a human-readable description of where the images came from.
        class_names: the name of each label id, when the data names its classes (a ``ClassLabel`` column, class
            sub-folders).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, source: str = "",
                 class_names: list[str] | None = None):  # fmt: skip
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = None if labels is None else labels.to(torch.int64)
        self.source = source
        self.class_names = list(class_names) if class_names else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].float().div(127.5).sub(1.0)  # (C, H, W) in [-1, 1]

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[2]

    def batch(
        self, indices: torch.Tensor, device: torch.device | str | None = None, flip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images ``indices`` as a float batch in ``[-1, 1]`` on ``device``; ``flip`` is a ``(B,)`` bool mask of
        images to mirror left-right. The uint8 tensor moves to the device first, so the copy is 4x smaller."""
        x = self.images[indices].to(device, non_blocking=True)
        x = x.float().div_(127.5).sub_(1.0)  # (B, C, H, W) in [-1, 1]
        if flip is not None:
            flip = flip.to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def to_pil(self, index: int) -> PIL.Image.Image:
        array = self.images[index].permute(1, 2, 0).numpy()  # (H, W, C)
        return PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

    def __repr__(self) -> str:
        labels = "" if self.labels is None else ", labelled"
        n, c, h, w = self.images.shape
        return f"ImageTensorDataset({n} images, {c}x{h}x{w}{labels}, from {self.source})"


def check_dataset_args(
    dataset: str | None = None,
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    train_data_files: list[str] | str | None = None,
    resolution: int = 32,
    channels: int | None = None,
    max_train_samples: int | None = None,
) -> None:
    """Checks the data options without reading any data; raises ``ValueError`` naming the bad value and the fix."""
    if dataset is not None and dataset not in DATASET_PRESETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; use one of {', '.join(DATASET_PRESETS)}, or --dataset_name <hub id>, "
            "--train_data_dir <folder> or --train_data_files <file.parquet>"
        )
    if dataset_name is not None and dataset is not None:
        raise ValueError(f"give --dataset {dataset} or --dataset_name {dataset_name}, not both")
    if train_data_dir is not None and (dataset_name is not None or train_data_files is not None):
        raise ValueError("--train_data_dir reads a folder of images; do not combine it with --dataset_name or files")
    if train_data_files is not None and dataset_name is not None:
        raise ValueError("--train_data_files reads local files; do not combine it with --dataset_name")
    if dataset is None and dataset_name is None and train_data_dir is None and train_data_files is None:
        raise ValueError(
            "no training data given; pass --dataset mnist (or fashion_mnist, cifar10, flowers102), "
            "--dataset_name <hub id>, --train_data_dir <folder of images> or --train_data_files <file.parquet>"
        )
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be an integer between 1 and {MAX_RESOLUTION}, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if max_train_samples is not None and max_train_samples < 1:
        raise ValueError(f"max_train_samples must be at least 1, got {max_train_samples}")


def check_resolution_for_unet(resolution: int, unet_config: dict) -> None:
    """Raises ``ValueError`` (naming a resolution that works) if a UNet with ``unet_config`` cannot take images of
    ``resolution``: each level halves the size, so it must be divisible by ``2 ** (levels - 1)``."""
    levels = len(unet_config.get("block_out_channels", (64, 128, 256, 512, 1024)))
    factor = 2 ** (levels - 1)
    if resolution % factor:
        up = -(-resolution // factor) * factor
        raise ValueError(
            f"resolution {resolution} is not divisible by 2**{levels - 1} = {factor} (the UNet has {levels} levels); "
            f"resize the images to {up} (e.g. --resolution {up}) or use a model config with fewer levels"
        )


def load_image_dataset(
    dataset: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    train_data_files: list[str] | str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    split: str = "train",
    resolution: int = 32,
    channels: int | None = None,
    center_crop: bool = False,
    cache_dir: str | os.PathLike | None = None,
    max_train_samples: int | None = None,
) -> ImageTensorDataset:
    """Loads images from a preset, a Hub dataset, local Parquet/Arrow files or a folder, decoded once and cached.

    Args:
        dataset: a key of :data:`DATASET_PRESETS`; with ``train_data_files``, gives the columns of a local copy.
        dataset_name, dataset_config_name: any Hub dataset (downloaded and cached by ``datasets``).
        train_data_dir: a folder of image files, searched recursively; class subfolders give labels.
        train_data_files: local ``.parquet``/``.arrow`` files with an image column.
        image_column, label_column: override the preset's (or default ``image``/``img``) columns.
        split: the split to read.
        resolution: output height and width.
        channels: 1 or 3 to force grayscale or RGB; ``None`` keeps the data's majority mode.
        center_crop: resize the shorter side and crop the center, instead of squashing to a square.
        cache_dir: cache of downloads and of the decoded tensor (default ``~/.cache/ddpmkit``).
        max_train_samples: keep only the first ``N`` images.
    """
    if isinstance(train_data_files, (str, os.PathLike)):
        train_data_files = [str(train_data_files)]
    check_dataset_args(
        dataset, dataset_name, train_data_dir, train_data_files, resolution, channels, max_train_samples
    )
    cache_root = cache_root_of(cache_dir)
    preset = DATASET_PRESETS.get(dataset) if dataset else None
    if preset is not None:
        image_column = image_column or preset.image_column
        label_column = label_column or preset.label_column
        if train_data_files is None and train_data_dir is None:
            dataset_name, dataset_config_name = preset.hub_id, dataset_config_name or preset.config_name

    # 1. where the images come from, and a cache key for it
    if train_data_dir is not None:
        folder = Path(train_data_dir)
        files = _list_image_files(folder)
        source = f"folder {folder}"
        identity = {"folder": str(folder.resolve()), "files": _file_stamps(files)}
    elif train_data_files is not None:
        paths = [Path(p) for p in train_data_files]
        for path in paths:
            if not path.is_file():
                raise ValueError(f"train data file {str(path)!r} does not exist; check the path")
        source = ", ".join(str(p) for p in paths)
        identity = {"files": _file_stamps(paths)}
    else:
        source = f"{dataset_name}" + (f" ({dataset_config_name})" if dataset_config_name else "")
        # the Hub copy that datasets holds (downloaded once), keyed by its fingerprint: a new revision decodes anew
        table = _load_hub_table(dataset_name, dataset_config_name, split, cache_root)
        identity = {"hub": dataset_name, "config": dataset_config_name, "fingerprint": table._fingerprint}
    options = {
        "format": CACHE_FORMAT_VERSION, "source": identity, "split": split, "image_column": image_column,
        "label_column": label_column, "resolution": resolution, "channels": channels, "center_crop": center_crop,
        "max_train_samples": max_train_samples,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]
    cache_file = cache_root / "images" / f"{key}.safetensors"
    cached = _read_cache(cache_file)
    if cached is not None:
        logger.info("Loaded %d decoded images from the cache %s", cached[0].shape[0], cache_file)
        return ImageTensorDataset(cached[0], cached[1], source=source, class_names=cached[2])

    # 2. the encoded images (bytes or paths) and labels
    if train_data_dir is not None:
        table, image_column, label_column = _load_image_folder(folder, files, cache_root), "image", None
        label_column = "label" if "label" in table.features else None
    elif train_data_files is not None:
        table = _load_files_table(train_data_files, split, cache_root)
    encoded, labels, class_names = _table_records(table, image_column, label_column, source)
    if max_train_samples is not None:
        encoded = encoded[:max_train_samples]
        labels = None if labels is None else labels[:max_train_samples]

    # 3. decode once into (N, C, H, W) uint8
    images, keep = decode_images(encoded, resolution, channels, center_crop, source)
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)[keep])
    _write_cache(cache_file, images, labels, source, class_names)
    return ImageTensorDataset(images, labels, source=source, class_names=class_names)


def decode_images(
    encoded: list, resolution: int, channels: int | None = None, center_crop: bool = False, source: str = "data"
) -> tuple[torch.Tensor, np.ndarray]:
    """Decodes images given as bytes, paths or PIL images into ``(N, C, resolution, resolution)`` uint8.

    Unreadable images are skipped and counted with a warning (a ``ValueError`` if none is readable). Returns the
    tensor and the indices of the images kept."""
    if not encoded:
        raise ValueError(f"{source} holds no images; check the path, split or --max_train_samples")

    # 1. open headers only, to learn each image's mode without decoding pixels
    opened, bad = [], []
    for index, item in enumerate(encoded):
        try:
            opened.append((index, _open_image(item)))
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            _raise_if_resource_error(error, item)
            bad.append((index, error))

    # 2. the channel count: forced, else the majority of the modes
    if channels is None:
        kinds = Counter(1 if image.mode in GRAYSCALE_MODES else 3 for _, image in opened)
        channels = 3 if kinds[3] > kinds[1] else 1
        if len(kinds) > 1:
            message = (
                f"{source} mixes {kinds[1]} grayscale and {kinds[3]} color images; converting all to "
                f"{'RGB' if channels == 3 else 'grayscale'} (pass --channels 1 or 3 to choose)"
            )
            warnings.warn(message, stacklevel=2)
            logger.warning(message)
    mode = "RGB" if channels == 3 else "L"

    # 3. decode, convert and resize
    out = np.empty((len(opened), resolution, resolution, channels), dtype=np.uint8)
    keep = []
    for index, image in opened:
        try:
            array = np.asarray(_resize(_convert(image, mode), resolution, center_crop))
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            _raise_if_resource_error(error, item)
            bad.append((index, error))
            continue
        out[len(keep)] = array.reshape(resolution, resolution, channels)
        keep.append(index)
    if not keep:
        first = bad[0][1] if bad else "no data"
        raise ValueError(
            f"none of the {len(encoded)} images in {source} could be read (first error: {first}); "
            "check that the files are images"
        )
    if bad:
        message = (
            f"skipped {len(bad)} unreadable image(s) of {len(encoded)} in {source} "
            f"(e.g. #{bad[0][0]}: {bad[0][1]}); training on the other {len(keep)}"
        )
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    images = torch.from_numpy(out[: len(keep)]).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return images, np.asarray(keep, dtype=np.int64)


def save_preview_grid(
    dataset: ImageTensorDataset, path: str | os.PathLike, nrow: int = 10, seed: int = 0
) -> PIL.Image.Image:
    """Saves the tutorial's grid of random training images (``nrow x nrow``, fewer if the data is smaller)."""
    count = min(nrow * nrow, len(dataset))
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:count]
    grid = image_grid([dataset.to_pil(int(i)) for i in indices], ncols=min(nrow, count), padding=0)
    atomic_save_image(grid, path)
    return grid


# --- sources --------------------------------------------------------------------------------------------------------


def _list_image_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise ValueError(f"train_data_dir {str(folder)!r} does not exist; check the path")
    if not folder.is_dir():
        raise ValueError(f"train_data_dir {str(folder)!r} is not a folder; pass the folder that holds the images")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.parts)
    )  # fmt: skip
    if not files:
        raise ValueError(
            f"train_data_dir {str(folder)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); "
            "add images or point to the right folder"
        )
    return files


def _file_stamps(paths: list[Path]) -> list:
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return stamps


def _load_image_folder(folder: Path, files: list[Path], cache_root: Path):
    """The folder as a ``datasets`` "imagefolder" (labels from class sub-folders when every image is in one)."""
    import datasets

    classes = {f.relative_to(folder).parts[0] for f in files if len(f.relative_to(folder).parts) > 1}
    labelled = len(classes) > 1 and all(len(f.relative_to(folder).parts) > 1 for f in files)
    return datasets.load_dataset(
        "imagefolder", data_files={"train": [str(f) for f in files]}, split="train", drop_labels=not labelled,
        drop_metadata=True, cache_dir=str(cache_root / "hf"),
    )  # fmt: skip


def _load_files_table(data_files: list[str], split: str, cache_root: Path):
    import datasets

    suffixes = {Path(f).suffix.lower() for f in data_files}
    builders = {DATA_FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"train_data_files must all be .parquet or all .arrow files, got {sorted(suffixes)}; "
            "for a folder of images use --train_data_dir"
        )
    files = {split: [str(Path(f).resolve()) for f in data_files]}
    return datasets.load_dataset(builders.pop(), data_files=files, split=split, cache_dir=str(cache_root / "hf"))


def _load_hub_table(dataset_name: str, config_name: str | None, split: str, cache_root: Path):
    import datasets

    try:
        return datasets.load_dataset(dataset_name, config_name, split=split, cache_dir=str(cache_root / "hf"))
    except (FileNotFoundError, ConnectionError) as error:  # DatasetNotFoundError is a FileNotFoundError
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"could not load dataset {dataset_name!r} ({first_line}); check the Hub id and the connection, or "
            "use --train_data_files for local files"
        ) from error


def _table_records(ds, image_column, label_column, source: str) -> tuple[list, list[int] | None, list[str] | None]:
    """The encoded images (bytes or paths, nothing decoded), integer labels and class names (of a ``ClassLabel``
    column) of a ``datasets`` table."""
    import datasets

    # 1. find the image column
    image_columns = [name for name, f in ds.features.items() if isinstance(f, datasets.Image)]
    if image_column is None:
        if len(image_columns) != 1:
            raise ValueError(
                f"{source} has {len(image_columns) or 'no'} image columns {image_columns} among {list(ds.features)}; "
                "name one with --image_column"
            )
        image_column = image_columns[0]
    if image_column not in ds.features:
        raise ValueError(
            f"image column {image_column!r} is not in {source} (columns: {list(ds.features)}); "
            f"pass --image_column {image_columns[0] if image_columns else '<column>'}"
        )
    if not isinstance(ds.features[image_column], datasets.Image):
        hint = f"pass --image_column {image_columns[0]}" if image_columns else "it holds no image column"
        raise ValueError(
            f"column {image_column!r} of {source} is not an image column (it is {ds.features[image_column]}); {hint}"
        )

    # 2. labels, if any
    if label_column is not None and label_column not in ds.features:
        raise ValueError(
            f"label column {label_column!r} is not in {source} (columns: {list(ds.features)}); "
            "fix --label_column or leave it out"
        )
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    table = ds.with_format("arrow")[:]
    encoded = table[image_column].to_pylist()
    labels = names = None
    if label_column is not None:
        labels = table[label_column].to_pylist()
        if any(not isinstance(v, int) or isinstance(v, bool) for v in labels):
            raise ValueError(f"label column {label_column!r} of {source} does not hold integers; fix --label_column")
        feature = ds.features[label_column]
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return encoded, labels, names


# --- decoding -------------------------------------------------------------------------------------------------------


def _open_image(item) -> PIL.Image.Image:
    if isinstance(item, PIL.Image.Image):
        return item
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return PIL.Image.open(io.BytesIO(item["bytes"]))
        if item.get("path"):
            return _open_path(item["path"])
        raise ValueError("image entry holds neither bytes nor a path")
    if isinstance(item, (bytes, bytearray)):
        return PIL.Image.open(io.BytesIO(item))
    if isinstance(item, (str, os.PathLike)):
        return _open_path(item)
    raise ValueError(f"cannot read an image from a {type(item).__name__}")


def _open_path(path) -> PIL.Image.Image:
    """The image at ``path``, read into memory: PIL keeps a lazily opened file open, and holding one per image
    runs out of file descriptors on folders of more than ``ulimit -n`` images."""
    with open(path, "rb") as f:
        return PIL.Image.open(io.BytesIO(f.read()))


RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


def _raise_if_resource_error(error: BaseException, item) -> None:
    """A machine out of file descriptors or memory says nothing about the image: stop instead of skipping it (and
    caching a shortened dataset)."""
    if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
        where = item.get("path") if isinstance(item, dict) else item if isinstance(item, (str, os.PathLike)) else None
        raise OSError(
            error.errno,
            f"could not read {where or 'an image'}: {os.strerror(error.errno)}; raise the limit (e.g. `ulimit -n "
            "4096`) or free memory, then run again",
        ) from error


def _convert(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    if image.mode == mode:
        image.load()
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # composite transparent images on white, as they are usually shown, not on black
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if array.max() > 255 else 255.0
        image = PIL.Image.fromarray(np.clip(array * (255.0 / high), 0, 255).astype(np.uint8), "L")
    return image.convert(mode)


def _resize(image: PIL.Image.Image, resolution: int, center_crop: bool) -> PIL.Image.Image:
    width, height = image.size
    if center_crop:
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        if size != image.size:
            image = image.resize(size, PIL.Image.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        return image.crop((left, top, left + resolution, top + resolution))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), PIL.Image.BICUBIC)
    return image


# --- cache ----------------------------------------------------------------------------------------------------------


def _read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None] | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            names = json.loads((f.metadata() or {}).get("class_names", "null"))
    except (OSError, SafetensorError, ValueError) as error:
        logger.warning("Ignoring the unreadable image cache %s (%s); decoding again", path, error)
        return None
    return tensors["images"], tensors.get("labels"), names if isinstance(names, list) else None


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor | None, source: str,
                 class_names: list[str] | None = None) -> None:  # fmt: skip
    from safetensors.torch import save

    tensors = {"images": images} if labels is None else {"images": images, "labels": labels}
    metadata = {"source": source[:500], "class_names": json.dumps(class_names)}
    try:
        atomic_write_bytes(path, save(tensors, metadata=metadata))
    except OSError as error:  # a cache that cannot be written costs time, not correctness
        logger.warning("Could not write the image cache %s (%s); the next run decodes again", path, error)

"""Labelled real images for evaluation, read from a Parquet split as uint8 ``(N, C, H, W)`` arrays.

Kept behind :func:`load_labelled_images` so that evaluation can move to the project's shared dataset loader
without changing anything else.
"""

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")


@dataclass
class LabelledImages:
    """Images of one dataset split.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``, or ``None`` for an unlabelled dataset.
        name: identifies the split's data in cache keys: the file's name and a prefix of its SHA-256.
    """

    images: np.ndarray
    labels: np.ndarray | None
    name: str


def split_file(source: str | os.PathLike, split: str) -> Path:
    """The Parquet file of ``split``: ``source`` itself if it is a file, else ``source/{split}.parquet``."""
    path = Path(source)
    if path.is_file():
        return path
    candidate = path / f"{split}.parquet"
    if not candidate.is_file():
        raise ValueError(
            f"dataset {str(source)!r} has no split {split!r}: expected the file {candidate}; pass a folder holding "
            f"{split}.parquet or the path of a Parquet file"
        )
    return candidate


def file_fingerprint(path: str | os.PathLike, length: int = 12) -> str:
    """The first ``length`` hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def pil_to_array(image: PIL.Image.Image, resolution: int, channels: int) -> np.ndarray:
    """One PIL image as uint8 ``(C, H, W)``, converted to ``L``/``RGB`` and resized bilinearly (as training does)."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), PIL.Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def load_labelled_images(
    source: str | os.PathLike,
    split: str,
    resolution: int,
    channels: int | None = None,
    max_samples: int | None = None,
) -> LabelledImages:
    """Reads a dataset split with ``datasets`` and returns its images resized to ``resolution``.

    Args:
        source: a folder with ``{split}.parquet`` files (as in ``../shared/data/mnist``) or one Parquet file.
        split: ``"train"``, ``"test"``, ...
        resolution: images are resized to ``resolution x resolution``.
        channels: 1 or 3; by default 1 for datasets of mode ``L`` images, else 3.
        max_samples: read only the first ``max_samples`` images.
    """
    from datasets import Image, load_dataset

    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    path = split_file(source, split)
    data = load_dataset("parquet", data_files={split: str(path)}, split=split)
    image_column = next((c for c in IMAGE_COLUMNS if c in data.column_names), None)
    if image_column is None:
        raise ValueError(f"{path} has no image column; expected one of {IMAGE_COLUMNS}, found {data.column_names}")
    label_column = next((c for c in LABEL_COLUMNS if c in data.column_names), None)
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
        data = data.select(range(min(max_samples, len(data))))
    if len(data) == 0:
        raise ValueError(f"{path} holds no images")
    # decoding the encoded bytes ourselves is several times faster than iterating decoded PIL images
    encoded = data.cast_column(image_column, Image(decode=False))[image_column]
    pil_images = (_open_image(item) for item in encoded)
    first = _open_image(encoded[0])
    if channels is None:
        channels = 1 if first.mode in ("L", "1", "I;16", "I", "F") else 3
    images = np.stack([pil_to_array(image, resolution, channels) for image in pil_images])
    labels = np.asarray(data[label_column], dtype=np.int64) if label_column else None
    return LabelledImages(images, labels, f"{path.parent.name}-{path.stem}-{file_fingerprint(path)}")


def _open_image(item: dict) -> PIL.Image.Image:
    if item.get("bytes") is not None:
        return PIL.Image.open(io.BytesIO(item["bytes"]))
    return PIL.Image.open(item["path"])

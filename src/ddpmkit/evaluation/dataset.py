"""Labelled real images for evaluation: one Parquet split as uint8 ``(N, C, H, W)`` arrays, read by the same
loader as training so real and generated images are resized alike."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def load_labelled_images(
    source: str | os.PathLike,
    split: str,
    resolution: int,
    channels: int | None = None,
    max_samples: int | None = None,
) -> LabelledImages:
    """Reads a dataset split and returns its images decoded and resized exactly as training reads them
    (:func:`ddpmkit.data.load_image_dataset`, which also caches the decoded tensor).

    Args:
        source: a folder with ``{split}.parquet`` files (as in ``../shared/data/mnist``) or one Parquet file.
        split: ``"train"``, ``"test"``, ...
        resolution: images are resized to ``resolution x resolution``.
        channels: 1 or 3; by default the data's own mode.
        max_samples: read only the first ``max_samples`` images.
    """
    import pyarrow.parquet as pq

    from ..data import load_image_dataset

    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
    path = split_file(source, split)
    columns = pq.read_schema(path).names
    label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
    data = load_image_dataset(
        train_data_files=[str(path)], split=split, resolution=resolution, channels=channels,
        label_column=label_column, max_train_samples=max_samples,
    )  # fmt: skip
    labels = None if data.labels is None else data.labels.numpy()
    return LabelledImages(data.images.numpy(), labels, f"{path.parent.name}-{path.stem}-{file_fingerprint(path)}")


def random_subset(data: LabelledImages, n: int | None, seed: int = 0) -> LabelledImages:
    """``n`` images of ``data`` drawn without replacement with ``seed``, kept in their original order (all of them
    when ``n`` is ``None`` or at least ``len``). Held-out splits can be sorted by class (CIFAR-10's Parquet files
    are), so their first ``n`` images are no sample of the split."""
    total = len(data.images)
    if n is None or n >= total:
        return data
    index = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    labels = None if data.labels is None else data.labels[index]
    return LabelledImages(data.images[index], labels, f"{data.name}-random{n}-seed{seed}")

"""Feature extractors and the on-disk cache of dataset statistics.

An extractor maps uint8 ``(B, C, H, W)`` images to ``(B, D)`` features and has a ``name`` that identifies its
weights. Statistics of a dataset split (mean and covariance of its features) are computed once per dataset file,
split, resolution, extractor and sample count, and kept as safetensors with JSON metadata.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..utils.cache import cache_root
from .classifier import ImageClassifier, classify
from .dataset import LabelledImages, file_fingerprint, load_labelled_images, random_subset
from .frechet import FeatureStatistics
from .inception import WEIGHTS_SHA256_PREFIX, FIDInceptionV3


class ClassifierFeatures:
    """The penultimate features (and class probabilities) of an :class:`ImageClassifier`."""

    def __init__(self, classifier: ImageClassifier, name: str | None = None, batch_size: int = 500):
        self.classifier = classifier.eval()
        self.batch_size = batch_size
        if name is None:
            digest = hashlib.sha256()
            for tensor in classifier.state_dict().values():
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            name = f"classifier-{digest.hexdigest()[:12]}"
        self.name = name
        self.last_probabilities: torch.Tensor | None = None

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> "ClassifierFeatures":
        """Loads a classifier folder; its name in cache keys comes from the weights file's SHA-256."""
        from .classifier import load_classifier

        weights = Path(path) / "diffusion_pytorch_model.safetensors"
        return cls(load_classifier(path), name=f"classifier-{file_fingerprint(weights)}")

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        features, self.last_probabilities = classify(self.classifier, images, self.batch_size)
        return features

    def classify(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, probabilities)`` of uint8 images."""
        return classify(self.classifier, images, self.batch_size)


class InceptionFeatures:
    """The 2048-d pool features of the FID Inception-v3."""

    name = f"inception-fid-{WEIGHTS_SHA256_PREFIX}"

    def __init__(self, weights: str | os.PathLike | None = None, batch_size: int = 50, device: str | None = None):
        self.model = FIDInceptionV3.from_weights(weights)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        images = torch.as_tensor(images)
        return torch.cat(
            [
                self.model(images[i : i + self.batch_size].to(self.device)).float().cpu()
                for i in range(0, len(images), self.batch_size)
            ]
        )


def default_cache_dir() -> Path:
    """``$DDPMKIT_CACHE/stats``, by default ``~/.cache/ddpmkit/stats``."""
    return cache_root() / "stats"


def _stats_key(
    data_name: str, resolution: int, extractor_name: str, max_samples: int | None, subset_seed: int | None = None
) -> str:
    count = "all" if max_samples is None else f"n{max_samples}"
    if subset_seed is not None:
        count = f"random{max_samples}-seed{subset_seed}"
    return f"{data_name}-{resolution}px-{extractor_name}-{count}"


def dataset_statistics(
    source: str | os.PathLike,
    split: str,
    resolution: int,
    extractor,
    channels: int | None = None,
    max_samples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    images: LabelledImages | None = None,
    subset_seed: int | None = None,
) -> FeatureStatistics:
    """Mean and covariance of ``extractor`` features over a dataset split, cached on disk.

    Args:
        source: a folder of ``{split}.parquet`` files or a Parquet file (see :func:`load_labelled_images`).
        split: the split, e.g. ``"train"``.
        resolution: images are resized to this side before the extractor sees them.
        extractor: a :class:`ClassifierFeatures`, :class:`InceptionFeatures` or any callable mapping uint8
            ``(B, C, H, W)`` to ``(B, D)`` with a ``name``.
        channels: 1 or 3; by default from the dataset's image mode.
        max_samples: use only the first ``max_samples`` images of the split.
        cache_dir: where statistics are kept; by default :func:`default_cache_dir`.
        images: the split already loaded, to skip reading it again on a cache miss.
        subset_seed: take ``max_samples`` images at random with this seed (:func:`random_subset`) instead of the
            first ones; splits sorted by class need it.
    """
    from .dataset import split_file

    path = split_file(source, split)
    data_name = f"{path.parent.name}-{path.stem}-{file_fingerprint(path)}"
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _stats_key(data_name, resolution, extractor.name, max_samples, subset_seed)
    cache_file = cache_dir / (key + ".safetensors")
    if cache_file.is_file():
        tensors = load_file(cache_file)
        return FeatureStatistics(tensors["mean"], tensors["cov"], int(tensors["num_samples"][0]))
    if images is None and subset_seed is not None:
        images = random_subset(load_labelled_images(source, split, resolution, channels=channels), max_samples,
                               subset_seed)  # fmt: skip
    elif images is None:
        images = load_labelled_images(source, split, resolution, channels=channels, max_samples=max_samples)
    start = time.time()
    stats = FeatureStatistics.from_features(extractor(images.images))
    cache_dir.mkdir(parents=True, exist_ok=True)
    metadata = {
        "dataset": data_name,
        "split": split,
        "resolution": str(resolution),
        "extractor": extractor.name,
        "num_samples": str(stats.num_samples),
        "seconds": f"{time.time() - start:.1f}",
    }
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    save_file(
        {"mean": stats.mean, "cov": stats.cov, "num_samples": np.array([stats.num_samples], dtype=np.int64)},
        str(tmp),
        metadata={"ddpmkit": json.dumps(metadata)},
    )
    os.replace(tmp, cache_file)  # atomic: a concurrent reader never sees half a file
    return stats

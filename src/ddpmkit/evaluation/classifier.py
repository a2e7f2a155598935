"""A small image classifier whose penultimate features give the classifier Fréchet distance, offline.

FID needs Inception-v3 weights from the internet and is blind to whether a 28x28 scribble is a digit. A CNN trained
on the dataset's own labels sees exactly that, so the Fréchet distance in its feature space, its confidence and the
spread of its predicted classes are cheap, offline measures of sample quality and mode coverage.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from torch import nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class ClassifierOutput(BaseOutput):
    """Output of :class:`ImageClassifier`.

    Args:
        logits: ``(B, num_classes)``.
        features: ``(B, feature_dim)``, the penultimate layer, where the Fréchet distance is measured.
    """

    logits: torch.Tensor
    features: torch.Tensor


class ImageClassifier(ModelMixin, ConfigMixin):
    """Conv-ReLU-pool stages, then a hidden fully connected layer (the features) and the class logits.

    Inputs are images in [-1, 1], ``(B, in_channels, sample_size, sample_size)``: what the pipeline gives with
    ``output_type="pt"`` after ``x * 2 - 1``.

    Args:
        in_channels: 1 for grey images, 3 for RGB.
        sample_size: image side; must be divisible by ``2 ** len(block_out_channels)``.
        num_classes: number of labels.
        block_out_channels: channels of each stage; every stage halves the resolution.
        feature_dim: width of the penultimate layer.
        dropout: dropout before the last layer, in training only.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 32,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (16, 32, 64),
        feature_dim: int = 128,
        dropout: float = 0.25,
    ):
        super().__init__()
        levels = len(block_out_channels)
        if sample_size % 2**levels:
            raise ValueError(
                f"sample_size {sample_size} is not divisible by 2**{levels}; use a multiple of {2**levels}"
            )
        layers, channels = [], in_channels
        for i, out_channels in enumerate(block_out_channels):
            # the first stage has one conv, at full resolution, the others two
            convs = 1 if i == 0 else 2
            for _ in range(convs):
                layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
                channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.convs = nn.Sequential(*layers)
        side = sample_size // 2**levels
        self.fc = nn.Linear(channels * side * side, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> ClassifierOutput | tuple:
        x = self.convs(sample)  # (B, C', H / 2**levels, W / 2**levels)
        features = F.relu(self.fc(x.flatten(1)))  # (B, feature_dim)
        logits = self.head(self.drop(features))  # (B, num_classes)
        if not return_dict:
            return logits, features
        return ClassifierOutput(logits=logits, features=features)


def images_to_model_input(images: torch.Tensor | np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` images to float in [-1, 1], resized bilinearly to ``size`` if they differ."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}; quantize with (x * 255).round() first")
    x = x.float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.no_grad()
def classify(
    classifier: ImageClassifier, images: torch.Tensor | np.ndarray, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``classifier`` on uint8 ``(N, C, H, W)`` images; returns ``(features (N, D), probabilities (N, K))``."""
    classifier.eval()
    size, channels = classifier.config.sample_size, classifier.config.in_channels
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(
            f"the classifier takes {channels}-channel (N, C, H, W) images, got shape {tuple(images.shape)}"
        )
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        x = images_to_model_input(images[start : start + batch_size], size).to(classifier.device)
        out = classifier(x)
        features.append(out.features.float().cpu())
        probabilities.append(out.logits.float().softmax(-1).cpu())
    return torch.cat(features), torch.cat(probabilities)


def prediction_summary(probabilities: torch.Tensor) -> dict:
    """Mean max-softmax confidence, the predicted-class histogram and its entropy (``log K`` = all classes alike).

    Args:
        probabilities: ``(N, K)`` softmax outputs.
    """
    num_classes = probabilities.shape[1]
    confidence, predicted = probabilities.max(dim=1)
    histogram = torch.bincount(predicted, minlength=num_classes).double() / len(predicted)
    nonzero = histogram[histogram > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    return {
        "confidence": float(confidence.mean()),
        "class_entropy": entropy,
        "class_entropy_max": math.log(num_classes),
        "class_histogram": [round(float(h), 4) for h in histogram],
    }


def accuracy(classifier: ImageClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Fraction of uint8 ``(N, C, H, W)`` images whose predicted class is their label."""
    _, probabilities = classify(classifier, images, batch_size)
    return float((probabilities.argmax(1).numpy() == np.asarray(labels)).mean())


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 2,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
    log_every: int = 100,
    **config,
) -> ImageClassifier:
    """Trains an :class:`ImageClassifier` with AdamW and a cosine learning-rate decay.

    Args:
        images: uint8 ``(N, C, H, W)``; ``C`` and ``H`` set the classifier's ``in_channels`` and ``sample_size``.
        labels: int ``(N,)`` in ``[0, num_classes)``.
        epochs: passes over the data.
        batch_size: images per step.
        learning_rate: peak AdamW learning rate.
        seed: seeds the initial weights and the order of the batches.
        log_every: print the loss every this many steps (0: never).
        config: further :class:`ImageClassifier` arguments (``block_out_channels``, ``feature_dim``, ...).
    """
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    num_classes = config.pop("num_classes", int(labels.max()) + 1)
    torch.manual_seed(seed)
    model = ImageClassifier(
        in_channels=images.shape[1], sample_size=images.shape[2], num_classes=num_classes, **config
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    step, start = 0, time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            index = order[i : i + batch_size]
            x = images_to_model_input(x_all[index])  # (B, C, H, W) in [-1, 1]
            # a one-pixel random shift: cheap augmentation that keeps the features from memorising pixels
            shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=shifts, dims=(2, 3))
            loss = F.cross_entropy(model(x).logits, y_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if log_every and step % log_every == 0:
                print(
                    f"epoch {epoch} step {step}/{epochs * steps_per_epoch} loss {loss.item():.4f} "
                    f"({time.time() - start:.0f} s)",
                    flush=True,
                )
    return model.eval()


def load_classifier(path: str | Path) -> ImageClassifier:
    """Loads a classifier folder written by ``save_pretrained`` (safetensors only)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{path} is not a classifier folder (no config.json); train one with "
            f"`ddpmkit train-classifier --dataset DIR --output {path}`"
        )
    return ImageClassifier.from_pretrained(path, use_safetensors=True).eval()


def bundled_classifier_path(dataset_name: str) -> Path | None:
    """The classifier committed with ddpmkit for ``dataset_name`` (e.g. ``"mnist"``), or ``None``."""
    path = ASSETS / f"{dataset_name}_classifier"
    return path if (path / "config.json").is_file() else None

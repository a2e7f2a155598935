"""Inception-v3 as the FID reference uses it (Heusel et al. 2017), in plain torch, without torchvision.

The network is the TensorFlow ``2015-12-05`` graph that FID is defined with: the layer names and the three
TensorFlow quirks (average pools that ignore padding, a max pool in the last block, a 1008-way classifier) follow
pytorch-fid and torch-fidelity (both Apache-2.0), so their weights file ``pt_inception-2015-12-05-6726825d.pth``
(``weights-inception-2015-12-05-6726825d.pth`` in torch-fidelity, the same file) loads as it is. Images are resized
to 299x299 with TensorFlow 1's bilinear rule, as torch-fidelity and torchmetrics do.

The weights cannot be fetched here; :func:`find_inception_weights` looks for them and says how to get them.
"""

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299


def inception_cache_dirs() -> list[Path]:
    """Where the weights file is looked for: torch hub's checkpoint folder (where pytorch-fid, torchmetrics and
    torch-fidelity download it to)."""
    torch_home = Path(os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"))
    return [torch_home.expanduser() / "hub" / "checkpoints"]


def missing_weights_message(path: str | os.PathLike | None = None) -> str:
    where = (
        f"{path} does not exist"
        if path
        else "no Inception weights found in " + ", ".join(str(d) for d in inception_cache_dirs())
    )
    return (
        f"FID needs the Inception-v3 FID weights and {where}: download {WEIGHTS_URL} on a machine with internet "
        f"and pass its path with --inception_weights (or inception_weights=), or put it in "
        f"{inception_cache_dirs()[0]}"
    )


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: ``path`` if given, else the first one found in :func:`inception_cache_dirs`.

    Raises:
        FileNotFoundError: with one line saying how to get the file.
    """
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(missing_weights_message(path))
        return Path(path)
    for folder in inception_cache_dirs():
        for name in WEIGHTS_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(missing_weights_message())


def resize_like_tensorflow1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's ``resize_bilinear`` rule (``align_corners=False`` and no half-pixel
    centres): output pixel ``i`` samples input position ``i * in / out``."""

    def sample(x: torch.Tensor, dim: int) -> torch.Tensor:
        length = x.shape[dim]
        position = torch.arange(size, dtype=torch.float64) * (length / size)
        low = position.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight = (position - low).to(x.dtype)
        shape = [1] * x.ndim
        shape[dim] = size
        weight = weight.view(shape)
        return x.index_select(dim, low) * (1 - weight) + x.index_select(dim, high) * weight

    return sample(sample(x, 2), 3)


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the average
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool="avg"`` for ``Mixed_7b``; ``"max"`` for ``Mixed_7c``, where the TensorFlow graph max-pools."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be one of ('avg', 'max'), got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        if self.pool == "avg":
            pooled = _avg_pool_no_pad(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, b3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3; :meth:`forward` maps uint8 images to the 2048-d pool features FID is computed on."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # in the weights file; FID does not use it

    @classmethod
    def from_weights(cls, path: str | os.PathLike | None = None, check_hash: bool = True) -> "FIDInceptionV3":
        """Loads the FID weights from ``path`` or the cache (see :func:`find_inception_weights`).

        The file is a torch pickle: it is read with ``weights_only=True``, which refuses anything but tensors, and
        its SHA-256 must start with ``6726825d`` like the published file's.
        """
        path = find_inception_weights(path)
        if check_hash:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            if not digest.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
                raise ValueError(
                    f"{path} is not the FID Inception weights file (its SHA-256 is {digest.hexdigest()[:16]}..., "
                    f"expected {WEIGHTS_SHA256_PREFIX}...); download {WEIGHTS_URL}"
                )
        model = cls()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` images, ``C`` 1 or 3, to ``(B, 2048)`` features."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 (B, 1 or 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        # 1. grey to RGB, resize to 299x299 like TensorFlow 1, scale to [-1, 1]
        x = images.expand(-1, 3, -1, -1).float()  # (B, 3, H, W) in [0, 255]
        x = resize_like_tensorflow1(x, INPUT_SIZE)  # (B, 3, 299, 299)
        x = (x - 128) / 128
        # 2. the stem
        x = self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))  # (B, 32, 147, 147)
        x = F.max_pool2d(self.Conv2d_2b_3x3(x), kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        # 3. the inception blocks
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)  # ends at (B, 2048, 8, 8)
        # 4. global average pool: the FID features
        return x.mean(dim=(2, 3))  # (B, 2048)

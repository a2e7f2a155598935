"""Sinusoidal timestep embedding, as in "Attention Is All You Need" (Vaswani et al. 2017, sec. 3.5)."""

import math

import torch
from torch import nn


class SinusoidalTimestepEmbedding(nn.Module):
    """Maps a batch of timesteps to ``[sin(t w_0), cos(t w_0), sin(t w_1), cos(t w_1), ...]``.

    The sin/cos pairs are interleaved and ``w_i = max_period ** (-i / (dim / 2))``, which is the layout the
    tutorial's pretrained weights were trained with.

    Args:
        dim: size of the embedding; must be even.
        max_period: the longest wavelength, 10000 in the paper.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"time embedding size {dim} must be even (it holds sin/cos pairs); use {dim + 1}")
        half = dim // 2
        self.dim = dim
        frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        # Derived from the config, so it is not part of the saved weights.
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        angles = timesteps.float()[:, None] * self.frequencies[None, :]  # (B, dim/2)
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (B, dim), interleaved

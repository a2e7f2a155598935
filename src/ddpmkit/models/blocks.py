"""The residual convolution block with timestep injection (the tutorial's ``ConvBlock``)."""

import torch
from diffusers.models.activations import get_activation
from torch import nn


class TimeConditionedResBlock(nn.Module):
    """Conv3x3 -> GroupNorm -> act, + projected time embedding, Conv3x3 -> GroupNorm -> act, + residual.

    The time embedding is projected to one value per channel (Linear -> act) and added to every pixel
    between the two convolutions. When the channel count changes, the residual is a 1x1 convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.act = get_activation(act_fn)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.conv_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        residual = self.conv_shortcut(x)  # (B, C_out, H, W)
        # 1. first convolution changes the channel count
        h = self.act(self.norm1(self.conv1(x)))  # (B, C_out, H, W)
        # 2. inject the timestep: one learned offset per channel
        h = h + self.act(self.time_emb_proj(temb))[:, :, None, None]
        # 3. second convolution keeps the shape
        h = self.act(self.norm2(self.conv2(h)))
        return h + residual

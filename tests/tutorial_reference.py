"""The tutorial's UNet, written out as the tutorial defines it, to check that its weights convert exactly."""

import math

import torch
from torch import nn


class TimeEmbedding(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model
        self.half_size = d_model // 2
        k = torch.arange(self.half_size) / self.half_size
        self.register_buffer("J", torch.exp(k * (-1 * math.log(10000))))

    def forward(self, t):
        t = t.view(t.size(0), 1)
        t_index = self.J.unsqueeze(0).expand(t.size(0), self.half_size) * t
        return torch.stack([t_index.sin(), t_index.cos()], dim=2).view(t.size(0), self.d_model)


class ConvBlock(nn.Module):
    def __init__(self, in_channel, out_channel, time_emb_size):
        super().__init__()
        self.seq1 = nn.Sequential(
            nn.Conv2d(in_channel, out_channel, 3, 1, 1), nn.GroupNorm(32, out_channel), nn.SiLU()
        )
        self.time_emb_linear = nn.Linear(time_emb_size, out_channel)
        self.silu = nn.SiLU()
        self.seq2 = nn.Sequential(
            nn.Conv2d(out_channel, out_channel, 3, 1, 1), nn.GroupNorm(32, out_channel), nn.SiLU()
        )
        self.residual = nn.Conv2d(in_channel, out_channel, 1) if in_channel != out_channel else nn.Identity()

    def forward(self, x, t_emb):
        residual = self.residual(x)
        x = self.seq1(x)
        t_emb = self.silu(self.time_emb_linear(t_emb)).view(x.size(0), x.size(1), 1, 1)
        return self.seq2(x + t_emb) + residual


class UNet(nn.Module):
    def __init__(self, img_channel, channels=(64, 128, 256, 512, 1024), time_emb_size=256):
        super().__init__()
        channels = [img_channel] + list(channels)
        self.time_emb = nn.Sequential(
            TimeEmbedding(time_emb_size), nn.Linear(time_emb_size, time_emb_size), nn.ReLU()
        )
        self.enc_convs = nn.ModuleList(
            ConvBlock(channels[i], channels[i + 1], time_emb_size) for i in range(len(channels) - 1)
        )
        self.maxpools = nn.ModuleList(nn.MaxPool2d(2, 2, 0) for _ in range(len(channels) - 2))
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(channels[-i - 1], channels[-i - 2], 2, 2) for i in range(len(channels) - 2)
        )
        self.dec_convs = nn.ModuleList(
            ConvBlock(channels[-i - 1], channels[-i - 2], time_emb_size) for i in range(len(channels) - 2)
        )
        self.output = nn.Conv2d(channels[1], img_channel, 1, 1, 0)

    def forward(self, x, t):
        t_emb = self.time_emb(t)
        residual = []
        for i, conv in enumerate(self.enc_convs):
            x = conv(x, t_emb)
            if i != len(self.enc_convs) - 1:
                residual.append(x)
                x = self.maxpools[i](x)
        for i, deconv in enumerate(self.deconvs):
            x = deconv(x)
            x = self.dec_convs[i](torch.cat((residual.pop(-1), x), dim=1), t_emb)
        return self.output(x)

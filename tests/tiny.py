"""Tiny models and pipelines shared by the tests."""

import torch

from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler

TINY_UNET = {"sample_size": 8, "block_out_channels": (8, 16), "norm_num_groups": 4, "time_embedding_dim": 8}


def make_tiny_pipeline(in_channels: int = 1, seed: int = 0, **scheduler_config) -> DDPMPipeline:
    torch.manual_seed(seed)
    unet = ConvUNet2DModel(in_channels=in_channels, **TINY_UNET).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler(**scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe

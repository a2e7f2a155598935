"""Named UNet sizes, chosen with ``--model_config NAME``. One registry, so sizes are not scattered."""

_SMALL = {"block_out_channels": (32, 64, 128), "time_embedding_dim": 128, "norm_num_groups": 8}

MODEL_PRESETS: dict[str, dict] = {
    # for tests and smoke runs: seconds on a CPU
    "tiny": {"block_out_channels": (16, 32, 64), "time_embedding_dim": 64, "norm_num_groups": 8},
    # three quarters of small's channels, 0.56x its FLOPs: 1.65x the training images per CPU-second, and on MNIST
    # better samples per CPU-minute than small in every run measured, up to 25 CPU-minutes (benchmarks/recipes)
    "slim": {"block_out_channels": (24, 48, 96), "time_embedding_dim": 96, "norm_num_groups": 8},
    # trains to readable MNIST digits on a laptop CPU within an hour
    "small": _SMALL,
    # small plus self-attention over its 7x7 (at 28x28) bottom: 12-14% lower classifier FD on MNIST at equal images
    # for 6% more training time per image (benchmarks/recipes/README.md)
    "small-attn": {**_SMALL, "add_attention": True},
    # CIFAR-10 on a GPU in minutes; 2.18M parameters, 8.7 MB of weights
    "base": {"block_out_channels": (64, 128, 256), "time_embedding_dim": 256, "norm_num_groups": 8},
    # the tutorial's model, 33.3M parameters at one channel; wants a GPU
    "tutorial": {"block_out_channels": (64, 128, 256, 512, 1024), "time_embedding_dim": 256, "norm_num_groups": 32},
}


def model_preset(name: str, **overrides) -> dict:
    """Returns the :class:`ConvUNet2DModel` config of preset ``name`` with ``overrides`` applied."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; use one of {sorted(MODEL_PRESETS)} or a config.json path")
    return {**MODEL_PRESETS[name], **overrides}

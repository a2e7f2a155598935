"""A convolutional UNet for DDPM, with the call signature and config names of diffusers' ``UNet2DModel``."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import ACT2CLS, get_activation
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .blocks import TimeConditionedResBlock
from .embeddings import SinusoidalTimestepEmbedding

# Sanity bounds: configs come from files that strangers share, so reject absurd sizes before allocating.
MAX_CHANNELS = 8192
MAX_LEVELS = 8
MAX_SAMPLE_SIZE = 8192
MAX_PARAMETERS = 2_000_000_000


@dataclass
class UNet2DOutput(BaseOutput):
    """Output of :class:`ConvUNet2DModel`.

    Args:
        sample: the prediction (noise, clean sample or velocity), shape ``(B, out_channels, H, W)``.
    """

    sample: torch.Tensor


def _check_int(name: str, value, low: int = 1, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


class ConvUNet2DModel(ModelMixin, ConfigMixin):
    """The tutorial's UNet: residual conv blocks with time injection, max-pool down, transposed-conv up, and
    skip connections concatenated on the channel axis.

    The defaults reproduce the tutorial's model (channels 64-128-256-512-1024, time embedding 256, 32 groups:
    33.3M parameters at one input channel). Smaller models are a matter of ``block_out_channels``; see
    :data:`ddpmkit.MODEL_PRESETS`.

    Args:
        sample_size: height and width of the images, an int or ``(height, width)``. Each must be divisible by
            ``2 ** (len(block_out_channels) - 1)``.
        in_channels: image channels (1 for grayscale, 3 for RGB).
        out_channels: channels of the prediction; ``None`` means ``in_channels``.
        block_out_channels: channels of each resolution level, from the highest resolution down.
        time_embedding_dim: size of the sinusoidal timestep embedding and of its MLP.
        norm_num_groups: groups of every GroupNorm; must divide every entry of ``block_out_channels``.
        norm_eps: epsilon of every GroupNorm.
        act_fn: activation inside the residual blocks and after the time projection.
        time_embedding_act_fn: activation after the time embedding's linear layer.
        num_class_embeds: if set, a learned class embedding is added to the time embedding, so
            ``class_labels`` can condition the model.
        id2label: the class names of a class-conditional model, ``{"0": name, ...}``, so a folder says what it
            draws. With it, ``num_class_embeds`` is one more than the classes: the last id is the null class
            ("no class"), which classifier-free guidance and unconditional sampling use.
        add_attention: self-attention over the pixels of the lowest resolution, after its encoder block (diffusers'
            mid-block attention: GroupNorm, one residual attention layer). Off in the tutorial's model.
        attention_head_dim: channels per attention head; ``None`` means one head over all channels.
        add_mid_block: one more residual block at the lowest resolution (after the attention, if any), so that
            with ``add_attention`` the bottom reads residual - attention - residual like diffusers' ``UNetMidBlock2D``.
    """

    _supports_gradient_checkpointing = False
    checks_own_folder = True  # see ddpmkit.loading

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | list[int] = 32,
        in_channels: int = 1,
        out_channels: int | None = None,
        block_out_channels: tuple[int, ...] | list[int] = (64, 128, 256, 512, 1024),
        time_embedding_dim: int = 256,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        act_fn: Literal["silu", "relu", "gelu", "mish"] = "silu",
        time_embedding_act_fn: Literal["silu", "relu", "gelu", "mish"] = "relu",
        num_class_embeds: int | None = None,
        id2label: dict[str, str] | None = None,
        add_attention: bool = False,
        attention_head_dim: int | None = None,
        add_mid_block: bool = False,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self._validate(
            sample_size, in_channels, out_channels, block_out_channels, time_embedding_dim, norm_num_groups,
            norm_eps, act_fn, time_embedding_act_fn, num_class_embeds,
        )  # fmt: skip
        _check_id2label(id2label, num_class_embeds)
        _check_bottom(add_attention, attention_head_dim, add_mid_block, block_out_channels[-1])
        channels = list(block_out_channels)

        # 1. time (and optional class) embedding: sinusoid -> Linear -> act
        self.time_proj = SinusoidalTimestepEmbedding(time_embedding_dim)
        self.time_embedding = nn.Linear(time_embedding_dim, time_embedding_dim)
        self.time_embedding_act = get_activation(time_embedding_act_fn)
        self.class_embedding = nn.Embedding(num_class_embeds, time_embedding_dim) if num_class_embeds else None

        def block(c_in: int, c_out: int) -> TimeConditionedResBlock:
            return TimeConditionedResBlock(c_in, c_out, time_embedding_dim, norm_num_groups, norm_eps, act_fn)

        # 2. encoder: one block per level, halving the resolution between levels
        encoder_in = [in_channels] + channels[:-1]
        self.down_blocks = nn.ModuleList(block(c_in, c_out) for c_in, c_out in zip(encoder_in, channels))
        self.downsample = nn.MaxPool2d(kernel_size=2, stride=2)

        # 3. optional bottom: attention and a residual block at the lowest resolution
        bottom = channels[-1]
        head_dim = attention_head_dim or bottom
        self.attention = Attention(
            bottom, heads=bottom // head_dim, dim_head=head_dim, norm_num_groups=norm_num_groups, eps=norm_eps,
            bias=True, upcast_softmax=True, residual_connection=True, _from_deprecated_attn_block=True,
        ) if add_attention else None  # fmt: skip
        self.mid_block = block(bottom, bottom) if add_mid_block else None

        # 4. decoder: transposed conv doubles the resolution, then a block over [skip, upsampled]
        pairs = list(zip(channels[1:], channels[:-1]))[::-1]  # (deeper, shallower), deepest first
        self.upsamplers = nn.ModuleList(nn.ConvTranspose2d(deep, shallow, 2, stride=2) for deep, shallow in pairs)
        self.up_blocks = nn.ModuleList(block(2 * shallow, shallow) for _, shallow in pairs)

        # 5. back to image channels
        self.conv_out = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    @staticmethod
    def _validate(
        sample_size, in_channels, out_channels, block_out_channels, time_embedding_dim, norm_num_groups,
        norm_eps, act_fn, time_embedding_act_fn, num_class_embeds,
    ) -> None:  # fmt: skip
        sizes = [sample_size] * 2 if isinstance(sample_size, int) else sample_size
        if not isinstance(sizes, (list, tuple)) or len(sizes) != 2:
            raise ValueError(f"sample_size must be an int or (height, width), got {sample_size!r}")
        for size in sizes:
            _check_int("sample_size", size, 1, MAX_SAMPLE_SIZE)
        _check_int("in_channels", in_channels, 1, MAX_CHANNELS)
        _check_int("out_channels", out_channels, 1, MAX_CHANNELS)
        if not isinstance(block_out_channels, (list, tuple)) or not 1 <= len(block_out_channels) <= MAX_LEVELS:
            raise ValueError(
                f"block_out_channels must be a list of 1 to {MAX_LEVELS} channel counts, got {block_out_channels!r}"
            )
        for c in block_out_channels:
            _check_int("every entry of block_out_channels", c, 1, MAX_CHANNELS)
        _check_int("time_embedding_dim", time_embedding_dim, 2, MAX_CHANNELS)
        if time_embedding_dim % 2:
            raise ValueError(f"time_embedding_dim {time_embedding_dim} must be even; use {time_embedding_dim + 1}")
        _check_int("norm_num_groups", norm_num_groups, 1, MAX_CHANNELS)
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {list(block_out_channels)} has {bad} not divisible by norm_num_groups "
                f"{norm_num_groups}; use channel counts that are multiples of {norm_num_groups} or a smaller "
                "norm_num_groups"
            )
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not 0 < norm_eps < 1:
            raise ValueError(f"norm_eps must be a float in (0, 1), got {norm_eps!r}")
        for name, value in (("act_fn", act_fn), ("time_embedding_act_fn", time_embedding_act_fn)):
            if value not in ACT2CLS:
                raise ValueError(f"{name} {value!r} is not supported; use one of {sorted(ACT2CLS)}")
        if num_class_embeds is not None:
            _check_int("num_class_embeds", num_class_embeds, 1, 1_000_000)
        factor = 2 ** (len(block_out_channels) - 1)
        for size in sizes:
            if size % factor:
                raise ValueError(_size_message(size, len(block_out_channels), "sample_size"))
        # Rough parameter count (3x3 convs, then the time and class embeddings) so that absurd configs fail
        # before allocating.
        channels = [in_channels, *block_out_channels]
        estimate = sum(9 * (a + 2 * b) * b + 18 * b * b for a, b in zip(channels, channels[1:]))
        estimate += time_embedding_dim * (time_embedding_dim + (num_class_embeds or 0) + 2 * sum(block_out_channels))
        if estimate > MAX_PARAMETERS:
            raise ValueError(
                f"block_out_channels {list(block_out_channels)}, time_embedding_dim {time_embedding_dim} and "
                f"num_class_embeds {num_class_embeds} give about {estimate / 1e9:.1f}B parameters, over the "
                f"{MAX_PARAMETERS / 1e9:.0f}B limit; use fewer channels or classes"
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_pickle: bool = False, **kwargs):
        """Loads a saved model after checking its folder (safetensors and JSON only; see :mod:`ddpmkit.utils.loading`).

        ``allow_pickle=True`` (or diffusers' ``use_safetensors=False``) opts into legacy pickled weights."""
        from ..utils.loading import CorruptFolderError, check_component_folder

        allow_pickle = allow_pickle or kwargs.get("use_safetensors", True) is not True
        folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if folder.is_dir():
            check_component_folder(folder, cls, allow_pickle)
        kwargs.setdefault("use_safetensors", None if allow_pickle else True)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise CorruptFolderError(f"{folder}: weights hold NaN or infinite values (e.g. {broken[0]}); re-save them")
        return model

    @property
    def num_levels(self) -> int:
        return len(self.config.block_out_channels)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predicts the model output for a noisy ``sample`` at ``timestep``.

        Args:
            sample: noisy images, ``(B, in_channels, H, W)``; H and W divisible by ``2 ** (levels - 1)``.
            timestep: a number, a 0-d tensor or a ``(B,)`` tensor.
            class_labels: ``(B,)`` integer labels; only for models built with ``num_class_embeds``.
            return_dict: return :class:`UNet2DOutput` rather than a tuple.
        """
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"sample must have shape (batch, {self.config.in_channels}, height, width), got {tuple(sample.shape)}"
            )
        batch, _, height, width = sample.shape
        for size in (height, width):
            if size < 1:
                raise ValueError(f"sample height and width must be at least 1, got {tuple(sample.shape[2:])}")
            if size % (2 ** (self.num_levels - 1)):
                raise ValueError(_size_message(size, self.num_levels, "input height/width"))
        if not sample.is_floating_point() or (
            sample.dtype != self.dtype and not torch.is_autocast_enabled(sample.device.type)
        ):
            raise ValueError(
                f"sample dtype {sample.dtype} must be the model's {self.dtype}; use sample.to(model.dtype)"
            )

        # 1. time embedding, (B, time_embedding_dim)
        timesteps = _broadcast_timesteps(timestep, batch, sample.device)
        temb = self.time_proj(timesteps).to(self.time_embedding.weight.dtype)
        temb = self.time_embedding_act(self.time_embedding(temb))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this model was built with num_class_embeds, so class_labels must be given")
            class_labels = _check_class_labels(class_labels, batch, self.config.num_class_embeds)
            temb = temb + self.class_embedding(class_labels.to(sample.device)).to(temb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels were given but the model has no class embedding (num_class_embeds=None)")

        # 2. encoder, keeping each level's output for the skips
        x = sample
        skips = []
        for level, block in enumerate(self.down_blocks):
            x = block(x, temb)  # (B, C_level, H / 2**level, W / 2**level)
            if level < self.num_levels - 1:
                skips.append(x)
                x = self.downsample(x)

        # 3. optional bottom, at the lowest resolution
        if self.attention is not None:
            x = self.attention(x)  # (B, C_bottom, h, w), attention over the h * w pixels, plus the residual
        if self.mid_block is not None:
            x = self.mid_block(x, temb)

        # 4. decoder: upsample, concatenate the skip first, then the block
        for upsample, block in zip(self.upsamplers, self.up_blocks):
            x = upsample(x)  # (B, C_shallow, 2h, 2w)
            x = block(torch.cat([skips.pop(), x], dim=1), temb)

        # 5. output projection
        x = self.conv_out(x)  # (B, out_channels, H, W)
        if not return_dict:
            return (x,)
        return UNet2DOutput(sample=x)


def _size_message(size: int, levels: int, what: str) -> str:
    factor = 2 ** (levels - 1)
    up = -(-size // factor) * factor
    fewer = max(1, (size & -size).bit_length())  # levels whose factor divides `size`
    return (
        f"{what} {size} is not divisible by 2**{levels - 1} = {factor} (block_out_channels has {levels} levels); "
        f"resize the images to {up} (e.g. --resolution {up}) or use at most {fewer} levels"
    )


def _check_class_labels(class_labels, batch: int, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(class_labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be integers, got dtype {labels.dtype}")
    labels = labels.reshape(-1) if labels.ndim == 0 else labels
    if labels.ndim != 1 or labels.shape[0] not in (1, batch):
        raise ValueError(f"class_labels must be a scalar or have shape ({batch},), got {tuple(labels.shape)}")
    # checked where it costs nothing: on a GPU the read-back would sync the host at every call
    if labels.device.type == "cpu" and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"class_labels must lie in [0, {num_classes - 1}], got {labels.tolist()}")
    return labels.expand(batch)


def _broadcast_timesteps(timestep, batch: int, device: torch.device) -> torch.Tensor:
    if not torch.is_tensor(timestep):
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
            raise ValueError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
        timestep = torch.tensor([timestep], dtype=torch.float32)
    if timestep.is_complex() or timestep.dtype == torch.bool:
        raise ValueError(f"timestep must be real numbers, got dtype {timestep.dtype}")
    timestep = timestep.to(device).reshape(-1) if timestep.ndim == 0 else timestep.to(device)
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
        raise ValueError(f"timestep must be a scalar or have shape ({batch},), got {tuple(timestep.shape)}")
    if timestep.is_floating_point() and not torch.isfinite(timestep).all():
        raise ValueError("timestep holds NaN or infinite values")
    return timestep.expand(batch)


def _check_bottom(add_attention, attention_head_dim, add_mid_block, bottom_channels: int) -> None:
    for name, value in (("add_attention", add_attention), ("add_mid_block", add_mid_block)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    if attention_head_dim is None:
        return
    _check_int("attention_head_dim", attention_head_dim, 1, MAX_CHANNELS)
    if not add_attention:
        raise ValueError(f"attention_head_dim {attention_head_dim} needs add_attention=True; set it or leave both out")
    if bottom_channels % attention_head_dim:
        raise ValueError(
            f"attention_head_dim {attention_head_dim} must divide the lowest level's {bottom_channels} channels "
            "(the last of block_out_channels); use a divisor or None for one head"
        )


MAX_LABEL_CHARS = 100


def _check_id2label(id2label, num_class_embeds) -> None:
    if id2label is None:
        return
    if not isinstance(id2label, dict) or not id2label:
        raise ValueError(f"id2label must be a non-empty dict of class id -> name, got {id2label!r}")
    ids = sorted(id2label, key=lambda k: int(k) if isinstance(k, str) and k.isdigit() else -1)
    if ids != [str(i) for i in range(len(id2label))]:
        raise ValueError(f"id2label keys must be the ids '0' to '{len(id2label) - 1}' as strings, got {ids[:5]}...")
    for name in id2label.values():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_LABEL_CHARS:
            raise ValueError(f"every id2label name must be 1 to {MAX_LABEL_CHARS} characters, got {name!r}")
    if num_class_embeds != len(id2label) + 1:
        raise ValueError(
            f"num_class_embeds must be {len(id2label) + 1} for {len(id2label)} classes (the last id is the null "
            f"class), got {num_class_embeds}"
        )


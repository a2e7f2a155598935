"""Convert weights trained with the tutorial's own code into a pipeline folder.

The tutorial's ``train.py`` saves the whole model with ``torch.save(model)``: a pickle, which can run code when
loaded, so reading it needs ``allow_pickle=True``. Even then only the classes a model of the tutorial consists of
(its ``UNet``, ``ConvBlock`` and ``TimeEmbedding``, standard ``torch.nn`` layers and tensor storage) are unpickled:
the tutorial's modules are replaced by empty stand-ins, so its code is not needed and no other code runs.
A plain ``state_dict`` saved as safetensors needs no opt-in.
"""

import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from .models import ConvUNet2DModel
from .pipelines import DDPMPipeline
from .schedulers import LinearDDPMScheduler
from .utils.loading import CorruptFolderError, UnsafeFolderError

# tutorial key pattern -> ddpmkit key
_BLOCK_PARTS = {
    "seq1.0": "conv1",
    "seq1.1": "norm1",
    "time_emb_linear": "time_emb_proj",
    "seq2.0": "conv2",
    "seq2.1": "norm2",
    "residual": "conv_shortcut",
}
_RENAMES = [
    (r"^time_emb\.1\.", "time_embedding."),
    (r"^enc_convs\.(\d+)\.", r"down_blocks.\1."),
    (r"^dec_convs\.(\d+)\.", r"up_blocks.\1."),
    (r"^deconvs\.(\d+)\.", r"upsamplers.\1."),
    (r"^output\.", "conv_out."),
]
_TUTORIAL_MODULES = ("unet", "conv_block", "TimeEmbedding", "config", "__main__")


def convert_tutorial_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Maps a tutorial ``UNet`` state dict to ``(ConvUNet2DModel config, state dict)``.

    Sizes (image channels, ``channels``, ``time_emb_size``) are read from the weights; the tutorial's
    GroupNorm always has 32 groups.
    """
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DataParallel prefix
    if "enc_convs.0.seq1.0.weight" not in state_dict or "time_emb.1.weight" not in state_dict:
        raise ValueError(
            "this is not a state dict of the tutorial's UNet (no enc_convs.0.seq1.0.weight / time_emb.1.weight); "
            "for a ddpmkit or diffusers folder use DDPMPipeline.from_pretrained instead"
        )
    levels = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"enc_convs\.(\d+)\.", k)))
    channels = [state_dict[f"enc_convs.{i}.seq1.0.weight"].shape[0] for i in range(levels)]
    in_channels = state_dict["enc_convs.0.seq1.0.weight"].shape[1]
    config = {
        "sample_size": 32,
        "in_channels": in_channels,
        "out_channels": state_dict["output.weight"].shape[0],
        "block_out_channels": channels,
        "time_embedding_dim": state_dict["time_emb.1.weight"].shape[0],
        "norm_num_groups": 32,
    }
    converted = {}
    for key, value in state_dict.items():
        if key == "time_emb.0.J":  # the sinusoid's frequencies: derived from the config, not learned
            continue
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        for old, part in _BLOCK_PARTS.items():
            new = new.replace(f".{old}.", f".{part}.")
        converted[new] = value
    return config, converted


class _Stub(nn.Module):
    """Stands in for a tutorial class while unpickling: it receives the module's state, runs none of its code."""


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("__builtin__", "set"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}


def _restricted_pickle_module() -> SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` that builds only a tutorial model: torch layers, tensors, and empty
    stand-ins for the tutorial's own classes. Anything else in the file is refused."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] in _TUTORIAL_MODULES:
                return type(name, (_Stub,), {})
            if module.startswith("torch.nn.modules.") or (module, name) in _ALLOWED_GLOBALS:
                return super().find_class(module, name)
            raise UnsafeFolderError(f"the checkpoint asks to load {module}.{name}, which a tutorial model never holds")

    return SimpleNamespace(Unpickler=Unpickler, load=lambda f, **kw: Unpickler(f, **kw).load(), __name__="pickle")


def load_tutorial_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Reads a tutorial checkpoint as a state dict: safetensors freely, pickles (``.pt``/``.pth``) only when
    allowed."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFolderError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if not allow_pickle:
        raise UnsafeFolderError(
            f"{path} is a pickle, which can run code when loaded; if you trust it, pass allow_pickle=True "
            "(--allow-pickle on the command line)"
        )
    try:  # a state_dict needs nothing beyond torch's weights-only loader
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a whole model: unpickle with stand-ins for the tutorial's classes
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
    except (RuntimeError, EOFError) as e:
        raise CorruptFolderError(f"{path} is not a readable torch checkpoint ({e})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a tutorial model or state dict")
    return obj


def convert_tutorial_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    sample_size: int = 32,
) -> DDPMPipeline:
    """Builds a :class:`DDPMPipeline` (the tutorial's sampler) from a tutorial checkpoint, saving it to
    ``output_dir`` if given.

    Args:
        checkpoint_path: ``number_model.pt``-style whole-model pickle, a state dict ``.pt``, or ``.safetensors``.
        output_dir: where to write the pipeline folder.
        allow_pickle: permit reading a pickle; it can run code, so only for files you trust.
        sample_size: the image size the model was trained at (the tutorial's ``IMG_SIZE``, 32).
    """
    config, state_dict = convert_tutorial_state_dict(load_tutorial_checkpoint(checkpoint_path, allow_pickle))
    unet = ConvUNet2DModel(**{**config, "sample_size": sample_size})
    missing, unexpected = unet.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path} does not match the tutorial's UNet: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    pipe = DDPMPipeline(unet=unet.eval(), scheduler=LinearDDPMScheduler.tutorial())
    if output_dir is not None:
        pipe.save_pretrained(output_dir)
    return pipe

from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "mish": nn.Mish}


def get_activation(name: str) -> nn.Module:
    """Returns a fresh activation module for a diffusers-style name (``"silu"``, ``"relu"``, ...)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported; use one of {sorted(ACTIVATIONS)}") from None

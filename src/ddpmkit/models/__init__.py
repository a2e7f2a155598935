from .embeddings import SinusoidalTimestepEmbedding
from .presets import MODEL_PRESETS, model_preset
from .unet_conv import ConvUNet2DModel, UNet2DOutput

__all__ = ["ConvUNet2DModel", "MODEL_PRESETS", "SinusoidalTimestepEmbedding", "UNet2DOutput", "model_preset"]

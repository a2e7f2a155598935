"""ddpmkit: train and sample DDPM image generators as diffusers pipelines."""

__version__ = "0.1.0"

from .models import MODEL_PRESETS, ConvUNet2DModel, UNet2DOutput, model_preset
from .pipelines import DDPMPipeline, DDPMPipelineOutput, DenoisingTrajectory
from .schedulers import DDPMSchedulerOutput, LinearDDPMScheduler
from .utils.loading import CorruptFolderError, UnsafeFolderError

__all__ = [
    "ConvUNet2DModel",
    "CorruptFolderError",
    "DDPMPipeline",
    "DDPMPipelineOutput",
    "DDPMSchedulerOutput",
    "DenoisingTrajectory",
    "LinearDDPMScheduler",
    "MODEL_PRESETS",
    "UNet2DOutput",
    "UnsafeFolderError",
    "model_preset",
]

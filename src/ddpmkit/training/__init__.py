"""Training DDPM pipelines: :func:`train` runs what ``ddpmkit train`` runs; the pieces are usable one by one in a
loop of your own."""

from .checkpoints import (
    CHECKPOINT_META,
    CHECKPOINT_PREFIX,
    CorruptCheckpointError,
    check_checkpoint_compatible,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from .config import TrainingConfig
from .loss import LossMonitor, NonFiniteLossError, TrainingError, diffusion_loss
from .schedule import build_lr_scheduler, epoch_permutation, lr_lambda, micro_batch_indices, step_generator
from .trainer import train

__all__ = [
    "CHECKPOINT_META",
    "CHECKPOINT_PREFIX",
    "CorruptCheckpointError",
    "LossMonitor",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingError",
    "build_lr_scheduler",
    "check_checkpoint_compatible",
    "diffusion_loss",
    "epoch_permutation",
    "list_checkpoints",
    "lr_lambda",
    "micro_batch_indices",
    "resolve_checkpoint",
    "save_checkpoint",
    "step_generator",
    "train",
    "verify_checkpoint",
]

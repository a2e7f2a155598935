"""The learning-rate schedule and the order of the data: both functions of the step alone, so a resumed run
continues exactly where an uninterrupted one would be.

diffusers' ``get_cosine_schedule_with_warmup`` decays to 0; this one ends at ``lr_min``, as the tutorial's
``CosineAnnealingLR(eta_min=1e-6)`` does.
"""

import math
from typing import Literal

import torch

LR_SCHEDULES = ("cosine", "linear", "constant")


def lr_lambda(
    step: int,
    warmup_steps: int,
    total_steps: int,
    schedule: Literal["cosine", "linear", "constant"] = "cosine",
    min_ratio: float = 0.0,
) -> float:
    """The learning-rate multiplier at optimizer step ``step``: linear warmup from 0 over ``warmup_steps``, then
    ``schedule`` from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "constant":
        return 1.0
    else:
        raise ValueError(f"lr schedule {schedule!r} must be one of {LR_SCHEDULES}")
    return min_ratio + (1.0 - min_ratio) * shape


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Literal["cosine", "linear", "constant"],
    warmup_steps: int,
    total_steps: int,
    lr_min: float = 1e-6,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for :func:`lr_lambda`, stepped once per optimizer step; ``lr_min`` is an absolute floor."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_scheduler {schedule!r} must be one of {LR_SCHEDULES}")
    base = optimizer.param_groups[0]["lr"]
    if lr_min < 0 or lr_min > base:
        raise ValueError(f"lr_min {lr_min} must be between 0 and the learning rate {base}; lower --lr_min")
    ratio = lr_min / base if base > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_lambda(step, warmup_steps, total_steps, schedule, ratio)
    )


def step_generator(seed: int, step: int, rank: int, micro_step: int, device: torch.device | str = "cpu"):
    """A generator for one micro-batch, derived from ``(seed, step, rank, micro_step)`` only, so a resumed run
    draws exactly the noise and timesteps an uninterrupted one would."""
    mixed = (seed * 1_000_003 + step) * 1_000_033 + rank * 1_009 + micro_step
    return torch.Generator(device=device).manual_seed(mixed % (2**63 - 1))


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the data in ``epoch``, the same on every process and after a resume."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def micro_batch_indices(
    permutation: torch.Tensor, step_in_epoch: int, micro_step: int, rank: int, batch_size: int,
    num_processes: int, accumulation_steps: int,
) -> torch.Tensor:  # fmt: skip
    """The indices of the micro-batch of process ``rank``: each optimizer step takes the next
    ``batch_size * num_processes * accumulation_steps`` items of the epoch's permutation."""
    total = batch_size * num_processes * accumulation_steps
    start = step_in_epoch * total + (micro_step * num_processes + rank) * batch_size
    return permutation[start : start + batch_size]


class TrainingProgress:
    """Where training stands (optimizer steps done), saved with every checkpoint as the data position."""

    def __init__(self, global_step: int = 0):
        self.global_step = global_step

    def state_dict(self) -> dict:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])

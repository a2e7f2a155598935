"""The training objective and the loss read-back."""

import math

import torch
from diffusers.training_utils import compute_snr
from torch import nn


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can fix; the message says how."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def diffusion_loss(
    model: nn.Module,
    noise_scheduler,
    clean_images: torch.Tensor,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The DDPM training loss of eq. (14) in Ho et al. 2020: ``|| eps - eps_theta(x_t, t) ||^2``.

    Args:
        model: a UNet taking ``(x_t, t)`` and returning an object with ``.sample`` or a tuple.
        noise_scheduler: gives ``add_noise``, ``alphas_cumprod`` and ``config.num_train_timesteps`` /
            ``prediction_type``.
        clean_images: ``x_0`` in ``[-1, 1]``, ``(B, C, H, W)``.
        generator: draws ``t`` and ``eps`` (on the images' device), making the step reproducible.
        snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023): each image's error is weighted by
            ``min(SNR(t), gamma)`` relative to the prediction type's own weighting, so that the low-noise steps,
            which are easy, stop dominating the gradient. ``None`` is the plain loss above.
    """
    batch, device = clean_images.shape[0], clean_images.device
    # 1. t ~ U{0, T-1} and eps ~ N(0, I)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)  # (B,)
    noise = torch.randn(clean_images.shape, device=device, generator=generator, dtype=clean_images.dtype)
    # 2. x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eq. (4)
    noisy = noise_scheduler.add_noise(clean_images, noise, timesteps)  # (B, C, H, W)
    # 3. predict and compare with the target of the scheduler's prediction type
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    output = model(noisy, timesteps, **kwargs)
    prediction = output.sample if hasattr(output, "sample") else output[0]
    prediction_type = getattr(noise_scheduler.config, "prediction_type", "epsilon")
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = clean_images
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean_images, noise, timesteps)
    else:
        raise ValueError(f"prediction_type {prediction_type!r} must be one of epsilon, sample, v_prediction")
    if snr_gamma is None:
        return nn.functional.mse_loss(prediction.float(), target.float())
    # 4. Min-SNR-gamma: the epsilon loss is the x_0 loss divided by SNR, the v loss the x_0 loss divided by
    # SNR + 1, so the weights that make it min(SNR, gamma) x the x_0 loss are:
    snr = compute_snr(noise_scheduler, timesteps)  # (B,) alpha_bar_t / (1 - alpha_bar_t)
    clipped = snr.clamp(max=snr_gamma)
    weight = {"epsilon": clipped / snr, "sample": clipped, "v_prediction": clipped / (snr + 1)}[prediction_type]
    per_image = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))  # (B,)
    return (per_image * weight).mean()


class LossMonitor:
    """Collects losses on the device and reads them back only every few steps, so training never waits on a
    host sync per step; raises :class:`NonFiniteLossError` naming the first NaN or infinite step."""

    def __init__(self):
        self._losses: list[torch.Tensor] = []
        self._first_step = 0

    def add(self, step: int, loss: torch.Tensor) -> None:
        if not self._losses:
            self._first_step = step
        self._losses.append(loss.detach().float().reshape(()))

    def flush(self, lr: float | None = None, reduce=None) -> float | None:
        """The mean of the losses since the last flush (``None`` if there were none).

        ``reduce`` (e.g. ``lambda t: accelerator.reduce(t, "mean")``) averages the losses over processes first, so
        that every process sees a NaN of any of them and all stop together."""
        if not self._losses:
            return None
        losses = torch.stack(self._losses)  # (steps,)
        if reduce is not None:
            losses = reduce(losses)
        values = losses.cpu().tolist()
        first, self._losses = self._first_step, []
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at step {first + offset}; stopped without saving, so the last good "
                    "checkpoint is kept: resume it with --resume_from_checkpoint latest and a lower --learning_rate"
                    + (f" (now {lr:.3g})" if lr is not None else "")
                    + " or --mixed_precision no",
                    first + offset,
                )
        return sum(values) / len(values)

"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020, arXiv:2006.11239) with a linear beta schedule.

Config keys and results match ``diffusers.DDPMScheduler``, so configs move freely between the two and every
diffusers scheduler that takes a DDPM config (DDIM, DPM-Solver++, ...) loads this one's ``config``.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

MAX_TRAIN_TIMESTEPS = 100_000
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


@dataclass
class DDPMSchedulerOutput(BaseOutput):
    """Output of :meth:`LinearDDPMScheduler.step`.

    Args:
        prev_sample: ``x_{t-1}``, the input of the next denoising step.
        pred_original_sample: the model's estimate of ``x_0`` at this step.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class LinearDDPMScheduler(SchedulerMixin, ConfigMixin):
    """DDPM ancestral sampling with ``beta_t`` rising linearly from ``beta_start`` to ``beta_end``.

    The tutorial's own sampler (``sigma_t = sqrt(beta_t)``, ``x_{t-1}`` clamped to [-1, 1] after every step) is
    ``LinearDDPMScheduler(variance_type="fixed_large", clip_sample=False, clip_prev_sample=True)``, also
    available as :meth:`tutorial`.

    Args:
        num_train_timesteps: number of diffusion steps ``T`` the model was trained with.
        beta_start, beta_end: first and last ``beta_t``.
        beta_schedule: only ``"linear"``; other diffusers schedules are refused.
        trained_betas: explicit betas, overriding ``beta_start``/``beta_end``.
        variance_type: ``"fixed_small"`` (posterior variance, eq. 7) or ``"fixed_large"`` (``beta_t``), each
            also computed in log space with ``_log`` (``"fixed_large_log"`` samples like ``"fixed_large"``, where
            diffusers' DDPMScheduler returns NaN).
        clip_sample: clamp the predicted ``x_0`` to ``[-clip_sample_range, clip_sample_range]``.
        prediction_type: what the model predicts: ``"epsilon"``, ``"sample"`` (``x_0``) or ``"v_prediction"``.
        thresholding: dynamic thresholding of the predicted ``x_0`` (Imagen), instead of ``clip_sample``.
        timestep_spacing: how inference timesteps are spread: ``"leading"``, ``"linspace"`` or ``"trailing"``.
        steps_offset: added to the timesteps with ``"leading"`` spacing.
        clip_prev_sample: clamp ``x_{t-1}`` to ``[-clip_sample_range, clip_sample_range]`` after every step, as
            the tutorial does.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        clip_prev_sample: bool = False,
    ):
        _validate_config(self.config)
        # 1. the noise schedule: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s
        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
        else:
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0

        # 2. by default every training timestep is visited, T-1 down to 0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.variance_type = variance_type

    @classmethod
    def tutorial(cls, **overrides) -> "LinearDDPMScheduler":
        """The tutorial's sampler: ``sigma_t = sqrt(beta_t)`` and ``x_{t-1}`` clamped to [-1, 1] every step."""
        config = {"variance_type": "fixed_large", "clip_sample": False, "clip_prev_sample": True}
        return cls(**{**config, **overrides})

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM needs no input scaling; present so that pipelines can treat every scheduler alike."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Chooses the timesteps of sampling: ``num_inference_steps`` spread by ``timestep_spacing``, or an explicit
        descending list ``timesteps``."""
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__len__"):
                raise ValueError(f"timesteps must be a list of integers, got {timesteps!r}")
            timesteps = [_integer_timestep(t) for t in timesteps]
            if not timesteps or any(b >= a for a, b in zip(timesteps, timesteps[1:])):
                raise ValueError(f"timesteps must be a non-empty strictly descending list, got {timesteps}")
            if timesteps[0] >= T or timesteps[-1] < 0:
                raise ValueError(f"timesteps must lie in [0, {T - 1}], got {timesteps[0]}..{timesteps[-1]}")
            self.custom_timesteps = True
            self.num_inference_steps = len(timesteps)
            self.timesteps = torch.tensor(timesteps, dtype=torch.int64, device=device)
            return

        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if not 1 <= num_inference_steps <= T:
            raise ValueError(
                f"num_inference_steps must be between 1 and num_train_timesteps={T}, got {num_inference_steps}"
            )
        self.num_inference_steps = int(num_inference_steps)
        self.custom_timesteps = False
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            steps = np.linspace(0, T - 1, num_inference_steps).round()[::-1].astype(np.int64)
        elif spacing == "leading":
            steps = np.arange(num_inference_steps)[::-1].astype(np.int64) * (T // num_inference_steps)
            steps = steps + self.config.steps_offset
        elif spacing == "trailing":
            steps = np.round(np.arange(T, 0, -T / num_inference_steps)).astype(np.int64) - 1
        else:
            raise ValueError(f"timestep_spacing {spacing!r} must be one of {TIMESTEP_SPACINGS}")
        self.timesteps = torch.from_numpy(steps.copy()).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep that follows ``timestep`` in the current schedule, -1 after the last one."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return timestep - 1
        matches = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
        if len(matches) == 0:
            raise ValueError(f"timestep {int(timestep)} is not in the schedule set by set_timesteps")
        index = int(matches[0])
        return torch.tensor(-1) if index == len(self.timesteps) - 1 else self.timesteps[index + 1]

    def _alpha_prods(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        return alpha_prod_t, alpha_prod_t_prev

    def _get_variance(self, t: int) -> torch.Tensor:
        """The variance of ``x_{t-1}`` given ``x_t``, eq. (6)-(7): ``beta~_t`` (small) or ``beta_t`` (large)."""
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t)
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        posterior = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        kind = self.config.variance_type
        if kind == "fixed_small":
            return posterior
        if kind == "fixed_small_log":  # diffusers returns the standard deviation for this one
            return torch.exp(0.5 * torch.log(posterior))
        if kind == "fixed_large":
            return current_beta_t
        if kind == "fixed_large_log":
            return torch.log(current_beta_t)
        raise ValueError(f"variance_type {kind!r} must be one of {VARIANCE_TYPES}")

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022): clamp to the per-sample quantile ``s`` and divide by ``s``."""
        dtype = sample.dtype
        batch = sample.shape[0]
        flat = sample.float().reshape(batch, -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.config.sample_max_value)[:, None]
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step: ``x_t`` and the model output at ``t`` give ``x_{t-1}``, eq. (7) and Algorithm 2.

        Args:
            model_output: the UNet's prediction, same shape as ``sample``.
            timestep: the current ``t``, one of ``self.timesteps``.
            sample: ``x_t``.
            generator: a generator, or one per image, for the added noise.
            return_dict: return :class:`DDPMSchedulerOutput` rather than a tuple.
        """
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} must match sample shape {tuple(sample.shape)}"
            )
        t = _integer_timestep(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep {t} must lie in [0, {self.config.num_train_timesteps - 1}]")
        # 1. alpha_bar_t, alpha_bar_{t-1}, and this step's alpha and beta
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. predicted x_0, eq. (15)
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        elif prediction_type == "sample":
            pred_original_sample = model_output
        elif prediction_type == "v_prediction":
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        else:
            raise ValueError(f"prediction_type {prediction_type!r} must be one of {PREDICTION_TYPES}")

        # 3. clip or threshold x_0
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-limit, limit)

        # 4. posterior mean mu~_t(x_t, x_0), eq. (7)
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 5. add noise, except at the last step
        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)  # fmt: skip
            variance = self._get_variance(t)
            if self.config.variance_type == "fixed_small_log":  # already a standard deviation
                std = variance
            elif self.config.variance_type == "fixed_large_log":  # a log variance (diffusers takes its sqrt: NaN)
                std = torch.exp(0.5 * variance)
            else:
                std = variance ** (0.5)
            prev_sample = prev_sample + std * noise

        # 6. the tutorial's clamp of x_{t-1}
        if self.config.clip_prev_sample:
            limit = self.config.clip_sample_range
            prev_sample = prev_sample.clamp(-limit, limit)

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _coefficients(self, reference: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` per sample, shaped to broadcast over ``reference``."""
        if not torch.is_tensor(timesteps):
            if isinstance(timesteps, (str, bytes)):
                raise ValueError(f"timesteps must be integers, got {timesteps!r}")
            try:
                timesteps = torch.as_tensor(timesteps)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"timesteps must be integers, got {timesteps!r}") from None
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
        if timesteps.ndim > 1 or timesteps.numel() not in (1, reference.shape[0]):
            raise ValueError(
                f"timesteps must be a scalar or have shape ({reference.shape[0]},), got {tuple(timesteps.shape)}"
            )
        if not reference.is_floating_point():
            raise ValueError(f"samples must be floating point, got dtype {reference.dtype}")
        T = self.config.num_train_timesteps
        if timesteps.numel() and (int(timesteps.min()) < 0 or int(timesteps.max()) >= T):
            raise ValueError(f"timesteps must lie in [0, {T - 1}], got {timesteps.min()}..{timesteps.max()}")
        self.alphas_cumprod = self.alphas_cumprod.to(device=reference.device)
        alphas_cumprod = self.alphas_cumprod.to(dtype=reference.dtype)
        alpha_prod = alphas_cumprod[timesteps.to(reference.device)].flatten()
        shape = (-1,) + (1,) * (reference.ndim - 1)
        return (alpha_prod**0.5).reshape(shape), ((1 - alpha_prod) ** 0.5).reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process in closed form, eq. (4): ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``."""
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} must match sample shape {tuple(original_samples.shape)}"
            )
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._coefficients(original_samples, timesteps)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022): ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0``."""
        if noise.shape != sample.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must match sample shape {tuple(sample.shape)}")
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._coefficients(sample, timesteps)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample


def _integer_timestep(timestep) -> int:
    """``timestep`` as an int: an integer, or a one-element tensor or number holding a whole value."""
    value = timestep
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) != 1:
            raise ValueError(f"timestep must be a single integer, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"timestep must be an integer, got {timestep!r}")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"timestep must be a whole number, got {timestep!r}")
    return int(value)


def _validate_config(config) -> None:
    """Rejects configs this scheduler cannot honour, naming the value and the fix."""
    T = config.num_train_timesteps
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"num_train_timesteps must be an integer in [1, {MAX_TRAIN_TIMESTEPS}], got {T!r}")
    if config.beta_schedule != "linear":
        raise ValueError(
            f"beta_schedule {config.beta_schedule!r} is not supported by LinearDDPMScheduler; use 'linear', or "
            "diffusers.DDPMScheduler for other schedules"
        )
    for name in ("beta_start", "beta_end", "clip_sample_range", "sample_max_value", "dynamic_thresholding_ratio"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if config.trained_betas is None and not 0 < config.beta_start <= config.beta_end < 1:
        raise ValueError(
            f"betas must satisfy 0 < beta_start <= beta_end < 1, got beta_start={config.beta_start}, "
            f"beta_end={config.beta_end}"
        )
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) != T or not ((betas > 0) & (betas < 1)).all():
            raise ValueError(f"trained_betas must be {T} values in (0, 1)")
    choices = {
        "variance_type": VARIANCE_TYPES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} {getattr(config, name)!r} must be one of {allowed}")
    for name in ("clip_sample", "thresholding", "rescale_betas_zero_snr", "clip_prev_sample"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(config, name)!r}")
    if config.rescale_betas_zero_snr:
        raise ValueError("rescale_betas_zero_snr=True is not supported by LinearDDPMScheduler; use diffusers' DDPM")
    offset = config.steps_offset
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < T:
        raise ValueError(f"steps_offset must be an integer in [0, {T - 1}], got {offset!r}")

"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020, arXiv:2006.11239) with a linear beta schedule.

:class:`LinearDDPMScheduler` is ``diffusers.DDPMScheduler`` plus what is its own: the tutorial's clamp of
``x_{t-1}`` (``clip_prev_sample``), configs checked when it is built, and ``add_noise`` / ``step`` that read no tensor
back from the device (``step`` given ``t`` as an int). Its config is a DDPM config with the one extra key
``clip_prev_sample``, so every diffusers scheduler that takes a DDPM config (DDIM, DPM-Solver++, ...) loads it.
"""

import math
from typing import Literal, get_args

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

# DiffusionPipeline.from_pretrained finds a component's load method by looking up its base class as an attribute of
# the module named in model_index.json (this one), so SchedulerMixin must be importable from here.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

__all__ = ["DDPMSchedulerOutput", "LinearDDPMScheduler"]

VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
TimestepSpacing = Literal["linspace", "leading", "trailing"]
MAX_TRAIN_TIMESTEPS = 100_000


class LinearDDPMScheduler(DDPMScheduler):
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
        rescale_betas_zero_snr: only ``False``; kept so that diffusers' DDPM configs load.
        clip_prev_sample: clamp ``x_{t-1}`` to ``[-clip_sample_range, clip_sample_range]`` after every step, as
            the tutorial does.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        clip_prev_sample: bool = False,
    ):
        _validate_config(self.config)  # before diffusers allocates anything from it
        ddpm_config = {k: v for k, v in self.config.items() if not k.startswith("_") and k != "clip_prev_sample"}
        super().__init__(**ddpm_config)
        # (timesteps, {t: the timestep after t}): the schedule on the host, so that step never searches the device
        self._following: tuple[torch.Tensor, dict[int, int]] | None = None
        # (device, dtype) -> [sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)] for every t, made once for each
        self._noise_tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def tutorial(cls, **overrides) -> "LinearDDPMScheduler":
        """The tutorial's sampler: ``sigma_t = sqrt(beta_t)`` and ``x_{t-1}`` clamped to [-1, 1] every step."""
        config = {"variance_type": "fixed_large", "clip_sample": False, "clip_prev_sample": True}
        return cls(**{**config, **overrides})

    # ------------------------------------------------------------------------------ the forward process, training

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process in closed form, eq. (4): ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``."""
        _check_same_shape(noise, original_samples)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar = self._noise_coefficients(original_samples, timesteps)
        return sqrt_alpha_bar * original_samples + sqrt_one_minus_alpha_bar * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022): ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0``."""
        _check_same_shape(noise, sample)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar = self._noise_coefficients(sample, timesteps)
        return sqrt_alpha_bar * noise - sqrt_one_minus_alpha_bar * sample

    def _noise_coefficients(self, reference: torch.Tensor, timesteps) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` per sample, shaped to broadcast over ``reference``.

        Only metadata is checked: the values of ``timesteps`` stay where they are. On the CPU an index out of
        ``[0, T)`` is refused by ``index_select`` itself; on an accelerator it is a device-side assert, as in
        diffusers.
        """
        timesteps = _integer_timesteps(timesteps, batch=reference.shape[0])
        if not reference.is_floating_point():
            raise ValueError(f"samples must be floating point, got dtype {reference.dtype}")
        table = self._noise_table(timesteps.device, reference.dtype)
        try:
            coefficients = table.index_select(1, timesteps.reshape(-1).long())  # (2, B)
        except (IndexError, RuntimeError):  # the CPU kernels raise one or the other for an index out of range
            T, low, high = self.config.num_train_timesteps, int(timesteps.min()), int(timesteps.max())
            if 0 <= low and high < T:
                raise
            raise ValueError(f"timesteps must lie in [0, {T - 1}], got {low}..{high}") from None
        shape = (2, -1) + (1,) * (reference.ndim - 1)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar = coefficients.to(reference.device).reshape(shape).unbind(0)
        return sqrt_alpha_bar, sqrt_one_minus_alpha_bar

    def _noise_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)]`` for every ``t``, a ``(2, T)`` tensor on ``device`` in
        ``dtype`` made on first use (diffusers casts ``alphas_cumprod`` to the samples' dtype on every call)."""
        key = (device, dtype)
        if key not in self._noise_tables:
            alpha_bar = self.alphas_cumprod.cpu().double()
            table = torch.stack([alpha_bar.sqrt(), (1 - alpha_bar).sqrt()])
            self._noise_tables[key] = table.to(device=device, dtype=dtype)
            # as diffusers' add_noise does, so that readers of alphas_cumprod (diffusers.training_utils.compute_snr)
            # find it on the timesteps' device rather than copying it there every step
            self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self._noise_tables[key]

    # ------------------------------------------------------------------------------ the reverse process, sampling

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Chooses the timesteps of sampling: ``num_inference_steps`` spread by ``timestep_spacing``, or an explicit
        strictly descending list ``timesteps``; anything else is refused with a ValueError."""
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
            super().set_timesteps(timesteps=timesteps)
            self.num_inference_steps = len(timesteps)
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
                raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
            if not 1 <= num_inference_steps <= T:
                raise ValueError(
                    f"num_inference_steps must be between 1 and num_train_timesteps={T}, got {num_inference_steps}"
                )
            super().set_timesteps(int(num_inference_steps))
        steps = self.timesteps.tolist()  # still on the CPU
        self.timesteps = self.timesteps.to(device)
        self._following = (self.timesteps, dict(zip(steps, [*steps[1:], -1])))

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep after ``timestep`` in the schedule, -1 after the last one, looked up on the host (diffusers
        searches ``self.timesteps`` on its device, a sync per step)."""
        t = _integer_timestep(timestep)
        if not (self.custom_timesteps or self.num_inference_steps):
            return t - 1
        if self._following is None or self._following[0] is not self.timesteps:  # timesteps assigned directly
            steps = self.timesteps.tolist()
            self._following = (self.timesteps, dict(zip(steps, [*steps[1:], -1])))
        following = self._following[1]
        if t not in following:
            raise ValueError(f"timestep {t} is not in the schedule set by set_timesteps")
        return following[t]

    def _get_variance(self, t: int, predicted_variance=None, variance_type: VarianceType | None = None):
        """What ``step`` scales the noise by (through its square root, or as it is for ``"fixed_small_log"``): the
        variance of ``x_{t-1}`` given ``x_t``, eq. (6)-(7). ``"fixed_large_log"`` is GLIDE's ``log beta_t``, which
        diffusers hands to that square root (NaN); it is exponentiated back here."""
        variance = super()._get_variance(t, predicted_variance, variance_type)
        if (variance_type or self.config.variance_type) == "fixed_large_log":
            return torch.exp(variance)
        return variance

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
            timestep: the current ``t``, one of ``self.timesteps``; a Python int reads nothing back from the
                device, a tensor on an accelerator is read once.
            sample: ``x_t``.
            generator: a generator, or one per image, for the added noise.
            return_dict: return :class:`DDPMSchedulerOutput` rather than a tuple.
        """
        _check_same_shape(model_output, sample, name="model_output")
        # 1. t as a Python int, so that alpha_bar_t and alpha_bar_{t-1} are indexed, and "t > 0" decided, on the host
        t = _integer_timestep(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep {t} must lie in [0, {self.config.num_train_timesteps - 1}]")
        # 2. diffusers' step: x_0 from eq. (15), clipped or thresholded; the posterior mean mu~_t(x_t, x_0) of eq. (7);
        #    plus sigma_t z for t > 0 (Algorithm 2, line 4)
        prev_sample, pred_original_sample = super().step(model_output, t, sample, generator, return_dict=False)
        # 3. the tutorial's clamp of x_{t-1}
        if self.config.clip_prev_sample:
            limit = self.config.clip_sample_range
            prev_sample = prev_sample.clamp(-limit, limit)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


def _check_same_shape(tensor: torch.Tensor, sample: torch.Tensor, name: str = "noise") -> None:
    if tensor.shape != sample.shape:
        raise ValueError(f"{name} shape {tuple(tensor.shape)} must match sample shape {tuple(sample.shape)}")


def _integer_timestep(timestep) -> int:
    """``timestep`` as an int: an integer, or a one-element tensor or number holding a whole value."""
    value = timestep
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) != 1:
            raise ValueError(f"timestep must be a single integer, got shape {tuple(value.shape)}")
        value = value.item()  # the one read back from the device, when a device tensor is passed
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"timestep must be an integer, got {timestep!r}")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"timestep must be a whole number, got {timestep!r}")
    return int(value)


def _integer_timesteps(timesteps, batch: int) -> torch.Tensor:
    """``timesteps`` as an integer tensor of one value or ``batch`` values, checked on its metadata only."""
    if not torch.is_tensor(timesteps):
        if isinstance(timesteps, (str, bytes)):
            raise ValueError(f"timesteps must be integers, got {timesteps!r}")
        try:
            timesteps = torch.as_tensor(timesteps)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"timesteps must be integers, got {timesteps!r}") from None
    if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
        raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
    if timesteps.ndim > 1 or timesteps.numel() not in (1, batch):
        raise ValueError(f"timesteps must be a scalar or have shape ({batch},), got {tuple(timesteps.shape)}")
    return timesteps


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
        "variance_type": get_args(VarianceType),
        "prediction_type": get_args(PredictionType),
        "timestep_spacing": get_args(TimestepSpacing),
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

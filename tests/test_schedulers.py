import itertools

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

from ddpmkit import LinearDDPMScheduler

# diffusers' DDPMScheduler turns "fixed_large_log" into NaN (sqrt of a log variance); it is tested on its own below.
VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for a UNet whose output depends on the sample and the timestep."""
    return torch.tanh(0.7 * sample + float(t) / 1000.0) * 1.3


def run_sampler(scheduler, steps: int, seed: int = 0, shape=(2, 1, 4, 4)):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(shape, generator=generator)
    scheduler.set_timesteps(steps)
    outputs = []
    for t in scheduler.timesteps:
        out = scheduler.step(fake_model(sample, t), t, sample, generator=generator)
        outputs.append((out.prev_sample, out.pred_original_sample))
        sample = out.prev_sample
    return outputs


@pytest.mark.parametrize(
    "variance_type, prediction_type, clip_sample",
    list(itertools.product(VARIANCE_TYPES, PREDICTION_TYPES, [True, False])),
)
def test_every_step_matches_diffusers(variance_type, prediction_type, clip_sample):
    config = {"variance_type": variance_type, "prediction_type": prediction_type, "clip_sample": clip_sample}
    ours, theirs = LinearDDPMScheduler(**config), DDPMScheduler(**config)
    for steps in (1000, 50):
        for (a_prev, a_x0), (b_prev, b_x0) in zip(run_sampler(ours, steps), run_sampler(theirs, steps), strict=True):
            torch.testing.assert_close(a_prev, b_prev, atol=1e-6, rtol=0)
            torch.testing.assert_close(a_x0, b_x0, atol=1e-6, rtol=0)


def test_fixed_large_log_samples_like_fixed_large():
    a = run_sampler(LinearDDPMScheduler(variance_type="fixed_large_log"), 50)
    b = run_sampler(LinearDDPMScheduler(variance_type="fixed_large"), 50)
    for (a_prev, _), (b_prev, _) in zip(a, b, strict=True):
        assert torch.isfinite(a_prev).all()
        torch.testing.assert_close(a_prev, b_prev, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 50, 999, 1000])
def test_timesteps_match_diffusers(spacing, steps):
    ours = LinearDDPMScheduler(timestep_spacing=spacing, steps_offset=0)
    theirs = DDPMScheduler(timestep_spacing=spacing, steps_offset=0)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)


def test_add_noise_and_velocity_match_diffusers():
    ours, theirs = LinearDDPMScheduler(), DDPMScheduler()
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, 4, 4, generator=generator)
    noise = torch.randn(8, 3, 4, 4, generator=generator)
    t = torch.randint(0, 1000, (8,), generator=generator)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), atol=1e-6, rtol=0)
    assert len(ours) == len(theirs) == 1000
    assert ours.scale_model_input(x0, 3) is x0


def test_add_noise_is_the_closed_form_forward_process():
    scheduler = LinearDDPMScheduler()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x0, noise = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([0, 999])
    expected = alpha_bar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(scheduler.add_noise(x0, noise, t), expected.float(), atol=1e-6, rtol=0)


def tutorial_reference_step(eps, t, x, generator, T=1000):
    """One step of the tutorial's backward_denoise, written out: sigma_t = sqrt(beta_t), x_{t-1} clamped to [-1, 1]."""
    betas = torch.linspace(0.0001, 0.02, T)
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=-1)
    mean = 1 / torch.sqrt(alphas[t]) * (x - (1 - alphas[t]) / torch.sqrt(1 - alphas_cumprod[t]) * eps)
    x = mean + torch.randn(x.shape, generator=generator) * torch.sqrt(betas[t]) if t != 0 else mean
    return torch.clamp(x, -1.0, 1.0)


def test_tutorial_sampler_matches_the_tutorial():
    scheduler = LinearDDPMScheduler.tutorial()
    assert scheduler.config.variance_type == "fixed_large" and scheduler.config.clip_prev_sample
    assert not scheduler.config.clip_sample
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    scheduler.set_timesteps(1000)
    for t in scheduler.timesteps:
        # Each step from the same x_t. The two formulas are algebraically equal; near t = 0 both divide by
        # 1 - alpha_bar_t ~ 1e-4 computed in float32, so there they differ by float32 rounding (up to ~6e-5).
        eps = fake_model(x, t)
        expected = tutorial_reference_step(eps, int(t), x, theirs)
        x = scheduler.step(eps, t, x, generator=ours).prev_sample
        torch.testing.assert_close(x, expected, atol=1e-4 if t < 20 else 1e-5, rtol=0)
    assert x.abs().max() <= 1.0


@pytest.mark.parametrize("cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, DDPMScheduler])
def test_diffusers_schedulers_load_our_config(cls):
    ours = LinearDDPMScheduler(prediction_type="v_prediction", beta_end=0.03)
    other = cls.from_config(ours.config)
    assert other.config.num_train_timesteps == 1000 and other.config.beta_end == 0.03
    assert other.config.prediction_type == "v_prediction"
    assert cls.__name__ in [c.__name__ for c in ours.compatibles]
    back = LinearDDPMScheduler.from_config(other.config)
    assert back.config.beta_end == 0.03


def test_save_and_reload(tmp_path):
    scheduler = LinearDDPMScheduler(beta_end=0.015, clip_prev_sample=True)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = LinearDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.beta_end == 0.015 and loaded.config.clip_prev_sample
    assert DDPMScheduler.from_pretrained(tmp_path).config.beta_end == 0.015


@pytest.mark.parametrize(
    "config, message",
    [
        ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule 'squaredcos_cap_v2' is not supported"),
        ({"num_train_timesteps": 10**9}, "num_train_timesteps must be an integer in"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "0 < beta_start <= beta_end < 1"),
        ({"prediction_type": "noise"}, "prediction_type 'noise' must be one of"),
        ({"variance_type": "learned"}, "variance_type 'learned' must be one of"),
        ({"timestep_spacing": "random"}, "timestep_spacing 'random' must be one of"),
        ({"clip_sample": "yes"}, "clip_sample must be true or false"),
    ],
)
def test_bad_config_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        LinearDDPMScheduler(**config)


def test_bad_step_inputs():
    scheduler = LinearDDPMScheduler()
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps=1000, got 0"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="got 1001"):
        scheduler.set_timesteps(1001)
    with pytest.raises(ValueError, match="must be an integer"):
        scheduler.set_timesteps(2.5)
    with pytest.raises(ValueError, match="strictly descending"):
        scheduler.set_timesteps(timesteps=[1, 5])
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="must match sample shape"):
        scheduler.step(torch.zeros(1, 1, 3, 3), 5, x)
    with pytest.raises(ValueError, match="timestep 1000 must lie in"):
        scheduler.step(x, 1000, x)
    with pytest.raises(ValueError, match="must lie in"):
        scheduler.add_noise(x, x, torch.tensor([1000]))
    with pytest.raises(ValueError, match="must be integers"):
        scheduler.add_noise(x, x, torch.tensor([1.5]))

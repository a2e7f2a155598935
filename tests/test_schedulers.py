import contextlib
import itertools
import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput as DiffusersDDPMSchedulerOutput

import ddpmkit
import ddpmkit.schedulers
from ddpmkit import LinearDDPMScheduler

# diffusers' DDPMScheduler turns "fixed_large_log" into NaN (sqrt of a log variance); it is tested on its own below.
VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
# A scheduler_config.json as the class before the DDPMScheduler subclass wrote it (the tutorial's sampler).
SAVED_CONFIG = """{
  "_class_name": "LinearDDPMScheduler", "_diffusers_version": "0.42.1", "beta_end": 0.015, "beta_schedule": "linear",
  "beta_start": 0.0001, "clip_prev_sample": true, "clip_sample": false, "clip_sample_range": 1.0,
  "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "epsilon",
  "rescale_betas_zero_snr": false, "sample_max_value": 1.0, "steps_offset": 0, "thresholding": false,
  "timestep_spacing": "leading", "trained_betas": null, "variance_type": "fixed_large"
}"""


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
        ({"clip_prev_sample": 1}, "clip_prev_sample must be true or false, got 1"),
        ({"beta_start": float("nan")}, "beta_start must be a finite number, got nan"),
        ({"num_train_timesteps": 10, "trained_betas": [0.1] * 9}, r"trained_betas must be 10 values in \(0, 1\)"),
        ({"num_train_timesteps": 3, "trained_betas": [0.1, 1.0, 0.1]}, "trained_betas must be 3 values"),
        ({"steps_offset": 1000}, r"steps_offset must be an integer in \[0, 999\], got 1000"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True is not supported"),
    ],
)
def test_bad_config_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        LinearDDPMScheduler(**config)
    with pytest.raises(ValueError, match=message):  # the same check when a saved config is loaded
        LinearDDPMScheduler.from_config({**json.loads(SAVED_CONFIG), **config})


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
    with pytest.raises(ValueError, match=r"must lie in \[0, 999\], got -1..-1"):  # not alphas_cumprod[-1]
        scheduler.add_noise(x, x, torch.tensor([-1]))
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 5 is not in the schedule"):
        scheduler.step(x, 5, x)


def test_is_a_diffusers_ddpm_scheduler():
    assert issubclass(LinearDDPMScheduler, DDPMScheduler)
    assert isinstance(LinearDDPMScheduler.tutorial(), DDPMScheduler)
    assert ddpmkit.DDPMSchedulerOutput is ddpmkit.schedulers.DDPMSchedulerOutput is DiffusersDDPMSchedulerOutput


@pytest.mark.parametrize("cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_saved_configs_still_load(tmp_path, cls):
    (tmp_path / "scheduler_config.json").write_text(SAVED_CONFIG)
    loaded = LinearDDPMScheduler.from_pretrained(tmp_path)
    expected = LinearDDPMScheduler.tutorial(beta_end=0.015)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in expected.config.items() if not k.startswith("_")
    }
    for (a, _), (b, _) in zip(run_sampler(loaded, 20), run_sampler(expected, 20), strict=True):
        assert torch.equal(a, b)
    other = cls.from_config(loaded.config)  # the extra key clip_prev_sample is carried along, unused
    assert other.config.beta_end == 0.015 and other.config.variance_type == "fixed_large"
    assert LinearDDPMScheduler.from_config(other.config).config.clip_prev_sample


@contextlib.contextmanager
def no_host_reads():
    """Makes every way of reading a tensor's value into Python raise, as each would wait on an accelerator."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read back to the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
            patch.setattr(torch.Tensor, name, refuse)
        yield


def test_no_host_reads_refuses_what_it_should():
    t = torch.tensor(3)
    reads = [lambda: t.item(), lambda: t.tolist(), lambda: bool(t), lambda: int(t), lambda: [0, 1, 2, 3][t]]
    with no_host_reads():
        for read in [*reads, lambda: "positive" if t > 0 else "not"]:
            with pytest.raises(AssertionError, match="read back"):
                read()
    assert t.item() == 3  # undone afterwards


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_noise_and_velocity_read_nothing_back(dtype):
    scheduler = LinearDDPMScheduler(prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 3, 4, 4, generator=generator).to(dtype)
    noise = torch.randn(8, 3, 4, 4, generator=generator).to(dtype)
    t = torch.randint(0, 1000, (8,), generator=generator)
    expected = DDPMScheduler().add_noise(x0.float(), noise.float(), t)
    with no_host_reads():
        noisy = scheduler.add_noise(x0, noise, t)
        velocity = scheduler.get_velocity(x0, noise, t)
        scheduler.add_noise(x0, noise, t[:1])  # one timestep for the whole batch
    assert noisy.dtype == velocity.dtype == dtype
    torch.testing.assert_close(noisy.float(), expected, atol=1e-6 if dtype == torch.float32 else 5e-2, rtol=0)


def test_add_noise_makes_its_table_once_per_device_and_dtype():
    scheduler = LinearDDPMScheduler()
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([0, 999])
    scheduler.add_noise(x, x, t)
    (table,) = scheduler._noise_tables.values()
    scheduler.add_noise(x, x, t)
    assert scheduler._noise_tables[(t.device, torch.float32)] is table
    scheduler.add_noise(x.double(), x.double(), t)
    assert len(scheduler._noise_tables) == 2 and table.shape == (2, 1000)


@pytest.mark.parametrize(
    "config",
    [
        {"variance_type": "fixed_small"},
        {"variance_type": "fixed_small_log", "prediction_type": "v_prediction"},
        {"variance_type": "fixed_large_log", "thresholding": True, "sample_max_value": 1.5},
        {"variance_type": "fixed_large", "clip_sample": False, "clip_prev_sample": True},
    ],
)
def test_step_reads_nothing_back_for_int_timesteps(config):
    scheduler = LinearDDPMScheduler(**config)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    sample = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    with no_host_reads():
        for t in timesteps:
            sample = scheduler.step(fake_model(sample, t), t, sample, generator=generators).prev_sample
    assert torch.isfinite(sample).all()


def test_step_with_one_generator_per_image_draws_each_image_alone():
    scheduler = LinearDDPMScheduler.tutorial()
    scheduler.set_timesteps(5)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = int(scheduler.timesteps[0])
    batch = scheduler.step(x, t, x, generator=[torch.Generator().manual_seed(i) for i in range(3)]).prev_sample
    alone = scheduler.step(x[1:2], t, x[1:2], generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(batch[1:2], alone, atol=0, rtol=0)


def test_timesteps_assigned_directly_are_followed():
    scheduler = LinearDDPMScheduler()
    scheduler.set_timesteps(10)
    scheduler.timesteps = scheduler.timesteps[3:]  # as some pipelines do for img2img
    assert scheduler.previous_timestep(scheduler.timesteps[0]) == int(scheduler.timesteps[1])
    assert scheduler.previous_timestep(0) == -1

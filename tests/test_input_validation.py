"""Hypothesis over scheduler, UNet and pipeline inputs: every call gives a correct result or one clear ValueError,
never NaN outputs, wrong shapes or a torch error from deep inside."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import TINY_UNET, make_tiny_pipeline

from ddpmkit import ConvUNet2DModel, LinearDDPMScheduler

T = 50  # num_train_timesteps of the schedulers here
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)

# every kind of value a caller might pass where a step count or a timestep is expected
step_counts = st.one_of(
    st.integers(-5, 2 * T),
    st.sampled_from([0, 1, T, T + 1, 10**9]),
    st.floats(-3, 60),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.builds(np.int64, st.integers(-2, T + 2)),
)
timestep_values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(-3, T + 3),
    st.floats(-5, T + 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(torch.tensor, st.integers(-3, T + 3)),
    st.builds(torch.tensor, st.lists(st.integers(0, T - 1), min_size=0, max_size=3)),
    st.booleans(),
    st.text(max_size=3),
)
float_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _whole(value):
    """The int a timestep stands for, or None when it is not a single whole number."""
    if torch.is_tensor(value):
        return int(value) if value.numel() == 1 and not value.is_floating_point() else None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)):
        return None
    return int(value) if np.isfinite(value) and value == int(value) else None


# ---------------------------------------------------------------------------------------------- scheduler


@pytest.mark.timeout(60)
@FAST
@given(count=step_counts, spacing=st.sampled_from(["leading", "linspace", "trailing"]))
def test_set_timesteps_gives_a_valid_schedule_or_a_clear_error(count, spacing):
    scheduler = LinearDDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    if not (_is_int(count) and 1 <= count <= T):
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(count)
        return
    scheduler.set_timesteps(count)
    steps = scheduler.timesteps
    assert steps.dtype == torch.int64 and steps.shape == (count,)
    assert (steps[:-1] > steps[1:]).all() and 0 <= int(steps.min()) and int(steps.max()) < T


@pytest.mark.timeout(60)
@FAST
@given(timesteps=st.lists(st.one_of(st.integers(-3, T + 3), st.floats(-3, T + 3)), max_size=6))
def test_custom_timesteps_are_descending_integers_in_range_or_refused(timesteps):
    scheduler = LinearDDPMScheduler(num_train_timesteps=T)
    whole = [_whole(t) for t in timesteps]
    valid = (
        whole
        and None not in whole
        and all(a > b for a, b in zip(whole, whole[1:]))
        and whole[0] < T
        and whole[-1] >= 0
    )
    if not valid:
        with pytest.raises(ValueError, match="timestep"):
            scheduler.set_timesteps(timesteps=timesteps)
        return
    scheduler.set_timesteps(timesteps=timesteps)
    assert scheduler.timesteps.tolist() == whole


@pytest.mark.timeout(60)
@FAST
@given(
    timesteps=timestep_values,
    batch=st.integers(1, 3),
    channels=st.integers(1, 3),
    size=st.integers(1, 6),
    dtype=float_dtypes,
    noise_batch=st.sampled_from([None, 1, 4]),
)
def test_add_noise_is_right_or_refused(timesteps, batch, channels, size, dtype, noise_batch):
    scheduler = LinearDDPMScheduler(num_train_timesteps=T)
    x = torch.randn(batch, channels, size, size).to(dtype)
    noise = torch.randn(noise_batch or batch, channels, size, size).to(dtype)
    t = torch.as_tensor(timesteps) if not isinstance(timesteps, str) else timesteps
    ok = (
        torch.is_tensor(t)
        and not t.is_floating_point()
        and t.dtype != torch.bool
        and t.ndim <= 1
        and t.numel() in (1, batch)
        and 0 <= int(t.min()) <= int(t.max()) < T
        and noise.shape == x.shape
    )
    if not ok:
        with pytest.raises(ValueError):
            scheduler.add_noise(x, noise, timesteps)
        return
    out = scheduler.add_noise(x, noise, timesteps)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    v = scheduler.get_velocity(x, noise, timesteps)
    assert v.shape == x.shape and torch.isfinite(v).all()


@pytest.mark.timeout(60)
@FAST
@given(
    timestep=timestep_values,
    dtype=float_dtypes,
    shapes=st.sampled_from([((2, 1, 4, 4), (2, 1, 4, 4)), ((2, 1, 4, 4), (1, 1, 4, 4)), ((1, 3, 4, 4), (1, 1, 4, 4)),
                            ((2, 1, 4, 4), (2, 1, 4, 2)), ((1, 1, 2, 2), (1, 1, 2, 2))]),  # fmt: skip
    steps=st.sampled_from([None, 1, 5, T]),
)
def test_step_is_right_or_refused(timestep, dtype, shapes, steps):
    scheduler = LinearDDPMScheduler(num_train_timesteps=T)
    if steps is not None:
        scheduler.set_timesteps(steps)
    output_shape, sample_shape = shapes
    model_output, sample = torch.randn(output_shape).to(dtype), torch.randn(sample_shape).to(dtype)
    t = _whole(timestep)
    in_schedule = t is not None and (steps is None or t in scheduler.timesteps.tolist())
    if output_shape != sample_shape or t is None or not 0 <= t < T or not in_schedule:
        with pytest.raises(ValueError):
            scheduler.step(model_output, timestep, sample, generator=torch.manual_seed(0))
        return
    out = scheduler.step(model_output, timestep, sample, generator=torch.manual_seed(0))
    assert out.prev_sample.shape == sample.shape and out.prev_sample.dtype == dtype
    assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.pred_original_sample).all()


# ---------------------------------------------------------------------------------------------- UNet


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return ConvUNet2DModel(**TINY_UNET, num_class_embeds=3).eval()


@pytest.mark.timeout(60)
@FAST
@given(
    batch=st.integers(0, 3),
    channels=st.integers(1, 3),
    height=st.integers(0, 10),
    width=st.integers(0, 10),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64]),
    timestep=st.one_of(timestep_values, st.just(torch.tensor([[1, 2]])), st.just(torch.tensor(1 + 1j))),
    labels=st.one_of(st.integers(-1, 4), st.lists(st.integers(-1, 4), max_size=4), st.just([0.5, 1.0])),
)
def test_unet_forward_is_right_or_refused(unet, batch, channels, height, width, dtype, timestep, labels):
    sample = torch.randn(batch, channels, height, width).to(dtype)
    labels = torch.tensor(labels)
    t = timestep if torch.is_tensor(timestep) else None
    timestep_ok = (
        (t is not None and not t.is_complex() and t.dtype != torch.bool and t.ndim <= 1 and t.numel() in (1, batch))
        or (t is None and isinstance(timestep, (int, float)) and not isinstance(timestep, bool))
    ) and (t is None or not t.is_floating_point() or torch.isfinite(t).all())
    if isinstance(timestep, float) and not np.isfinite(timestep):
        timestep_ok = False
    labels_ok = (
        not labels.is_floating_point()
        and labels.ndim <= 1
        and (labels.ndim == 0 or labels.shape[0] in (1, batch))
        and (labels.numel() == 0 or 0 <= int(labels.min()) <= int(labels.max()) < 3)
    )
    ok = channels == 1 and height in (2, 4, 6, 8, 10) and width in (2, 4, 6, 8, 10) and dtype == torch.float32
    if batch == 0 and t is not None and t.numel() == 1:
        pass  # one timestep broadcasts over an empty batch
    if not (ok and timestep_ok and labels_ok):
        with pytest.raises(ValueError):
            unet(sample, timestep, class_labels=labels)
        return
    out = unet(sample, timestep, class_labels=labels).sample
    assert out.shape == sample.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(num_train_timesteps=T)


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    steps=step_counts,
    batch_size=st.one_of(st.integers(-1, 3), st.floats(0, 3), st.booleans()),
    output_type=st.sampled_from(["np", "pt", "pil", "latent", "PIL", None]),
    trajectory=st.one_of(st.none(), st.integers(-1, 4), st.lists(st.integers(-6, 6), max_size=3), st.just("all")),
)
def test_pipeline_call_is_right_or_refused(pipe, steps, batch_size, output_type, trajectory):
    call = dict(batch_size=batch_size, num_inference_steps=steps, output_type=output_type,
                trajectory_steps=trajectory, generator=torch.manual_seed(0))  # fmt: skip
    ok = (
        _is_int(steps) and 1 <= steps <= T
        and _is_int(batch_size) and batch_size >= 1
        and output_type in ("np", "pt", "pil")
        and (trajectory is None or (_is_int(trajectory) and trajectory >= 1)
             or (isinstance(trajectory, list) and all(-steps <= i < steps for i in trajectory)))
    )  # fmt: skip
    if not ok:
        with pytest.raises(ValueError):
            pipe(**call)
        return
    out = pipe(**call)
    images = out.images
    if output_type == "pil":
        assert len(images) == batch_size and images[0].size == (8, 8)
        return
    images = images.numpy() if torch.is_tensor(images) else images
    assert images.shape == ((batch_size, 8, 8, 1) if output_type == "np" else (batch_size, 1, 8, 8))
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    if trajectory is not None and out.trajectory is not None:
        assert torch.isfinite(out.trajectory.samples).all()


@pytest.mark.timeout(60)
def test_generator_list_must_match_the_batch(pipe):
    with pytest.raises(ValueError, match="generators"):
        pipe(batch_size=2, num_inference_steps=1, generator=[torch.manual_seed(0)] * 3)

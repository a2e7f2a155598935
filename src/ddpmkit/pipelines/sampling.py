"""Drawing many images: samplers by name, one seed per image, batching.

Every part of ddpmkit that draws images (``ddpmkit sample``, evaluation, the trainer's sample grids, the benchmarks)
goes through :func:`sample_batches`, so image ``i`` of seed ``s`` is the same image everywhere, whatever the batch
size: it is drawn with its own generator seeded ``s + i``.
"""

import inspect
from collections.abc import Iterator

import torch

# name -> default number of denoising steps
SAMPLERS = {"ddpm": 1000, "ddim": 50, "dpmsolver": 20}
DEFAULT_SAMPLER = "ddim"
MAX_PIXELS = 2**31  # images x channels x height x width that one sampling run may allocate (8 GiB of float32)
MAX_SEED = 2**63 - 2**32  # seed + image index must stay a valid torch seed


def make_scheduler(scheduler, name: str):
    """The scheduler ``name`` (``"ddpm"``, ``"ddim"`` or ``"dpmsolver"`` for DPM-Solver++) built from the config of
    ``scheduler``; a DDPM scheduler asked for ``"ddpm"`` is returned as it is."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddpm":
        if isinstance(scheduler, DDPMScheduler):
            return scheduler
        return _from_config(DDPMScheduler, scheduler.config)
    elif name == "ddim":
        return _from_config(DDIMScheduler, scheduler.config)
    elif name == "dpmsolver":
        return _from_config(DPMSolverMultistepScheduler, scheduler.config, algorithm_type="dpmsolver++")
    else:
        raise ValueError(f"sampler {name!r} must be one of {', '.join(SAMPLERS)}")


def _from_config(cls, config, **overrides):
    """``cls`` built from the keys of ``config`` it takes (a DDPM config has a few that DDIM does not)."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted}, **overrides)


def with_sampler(pipe, name: str | None):
    """``pipe`` with its scheduler replaced by sampler ``name``, built from the same config; ``None`` or
    ``"pipeline"`` keeps the pipeline's own. The input pipeline is not changed."""
    if name in (None, "pipeline"):
        return pipe
    scheduler = make_scheduler(pipe.scheduler, name)
    if scheduler is pipe.scheduler:
        return pipe
    swapped = type(pipe)(unet=pipe.unet, scheduler=scheduler)
    swapped.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {"disable": True}))
    return swapped


def image_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image: image ``start + k`` gets seed ``seed + start + k``."""
    return [torch.Generator().manual_seed(seed + start + k) for k in range(count)]


def sample_batches(
    pipe,
    num_images: int,
    num_inference_steps: int,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    class_labels=None,
    **call_kwargs,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Draws ``num_images`` images in batches of ``batch_size``, yielding ``(index of the first image, images)``
    with the images a float ``(B, C, H, W)`` CPU tensor in [0, 1].

    Args:
        pipe: a :class:`~ddpmkit.DDPMPipeline` (or any pipeline taking ``generator`` lists and ``output_type="pt"``).
        num_inference_steps: denoising steps.
        seed: image ``i`` is drawn with its own generator seeded ``seed + i``.
        progress: a progress bar over the images (when there is more than one batch).
        class_labels: for a class-conditional pipeline, one class for every image, or one per image (a list or
            tensor of ``num_images`` ids or names), sliced per batch.
        call_kwargs: passed to the pipeline (``trajectory_steps``, ``guidance_scale``, ...).
    """
    for name, value in (("num_images", num_images), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - num_images:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED - num_images}], got {seed!r}")
    per_image = isinstance(class_labels, (list, tuple)) or (torch.is_tensor(class_labels) and class_labels.ndim)
    if per_image and len(class_labels) != num_images:
        raise ValueError(f"got {len(class_labels)} class labels for {num_images} images; pass one or one per image")
    from tqdm.auto import tqdm

    starts = range(0, num_images, batch_size)
    bar = tqdm(total=num_images, unit="img", desc="sampling", disable=not progress or len(starts) == 1)
    try:
        for start in starts:
            count = min(batch_size, num_images - start)
            if class_labels is not None:
                call_kwargs["class_labels"] = class_labels[start : start + count] if per_image else class_labels
            output = pipe(
                batch_size=count,
                generator=image_generators(seed, start, count),
                num_inference_steps=num_inference_steps,
                output_type="pt",
                **call_kwargs,
            )
            images = torch.as_tensor(output.images)
            if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
                images = images.permute(0, 3, 1, 2)  # pipelines that return (B, H, W, C) arrays
            bar.update(count)
            yield start, images.float().cpu().clamp(0, 1)
    finally:
        bar.close()


def sample_images(pipe, num_images: int, num_inference_steps: int, seed: int = 0, batch_size: int = 32,
                  progress: bool = False, class_labels=None, **call_kwargs) -> torch.Tensor:  # fmt: skip
    """All images of :func:`sample_batches` as one float ``(N, C, H, W)`` tensor in [0, 1]."""
    batches = sample_batches(pipe, num_images, num_inference_steps, seed, batch_size, progress, class_labels,
                             **call_kwargs)  # fmt: skip
    return torch.cat([images for _, images in batches])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as uint8, quantized as a saved PNG would be."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def balanced_labels(num_classes: int, num_images: int) -> list[int]:
    """Class ``i % num_classes`` for image ``i``: every class equally often (to one), in a fixed order."""
    return [i % num_classes for i in range(num_images)]


"""The inference pipeline: noise in, images out, with the UNet and the scheduler as its two components."""

import inspect
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .loading import load_pipeline_safely

# the guidance of a class-conditional model when none is given: on MNIST the lowest classifier FD among the scales
# whose samples are the digit asked for at least 97% of the time (model_cards/mnist.md)
DEFAULT_GUIDANCE = 1.5
# on a CPU the UNet's cost per image grows with the images in a call as its activations leave the caches (1.5x at
# 200 against 100 on a Xeon; on a 2-core AMD EPYC 100 images in pieces of 25 took 0.82x the time of one call for
# `small` at 32x32, 0.80x for `base`: benchmarks/results-pieces.md), so every CPU call runs in pieces of this many
CPU_UNET_PIECE = 25

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class DDPMPipelineOutput(BaseOutput):
    """Output of :class:`DDPMPipeline`.

    Args:
        images: the images: PIL images, an ``(B, H, W, C)`` array in [0, 1], or a ``(B, C, H, W)`` tensor in [0, 1].
        trajectory: the recorded denoising steps when ``trajectory_steps`` was given, else ``None``.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    trajectory: "DenoisingTrajectory | None" = None


@dataclass
class DenoisingTrajectory:
    """The denoising process at chosen steps, images mapped to [0, 1] and kept on the CPU.

    Args:
        timesteps: the timestep ``t`` of each recorded step.
        samples: ``x_t``, the input of each recorded step, ``(steps, B, C, H, W)``; ``samples[0]`` is pure noise
            when step 0 is recorded.
        pred_original_samples: the scheduler's estimate of ``x_0`` at each recorded step, same shape, or ``None``
            for schedulers that do not give one.
    """

    timesteps: list[int]
    samples: torch.Tensor
    pred_original_samples: torch.Tensor | None


class DDPMPipeline(DiffusionPipeline):
    """Image generation by DDPM ancestral sampling (or any diffusers scheduler swapped in): unconditional, or of the
    classes a class-conditional UNet was trained on, with classifier-free guidance.

    Args:
        unet: a :class:`~ddpmkit.ConvUNet2DModel` or a diffusers ``UNet2DModel``.
        scheduler: a :class:`~ddpmkit.LinearDDPMScheduler` or any diffusers scheduler.

    Example:

    >>> import torch
    >>> from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler
    >>> unet = ConvUNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, time_embedding_dim=8)
    >>> pipe = DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler())
    >>> pipe.set_progress_bar_config(disable=True)
    >>> images = pipe(batch_size=2, num_inference_steps=5, generator=torch.manual_seed(0)).images
    >>> images[0].size, images[0].mode
    ((8, 8), 'L')
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, allow_pickle: bool = False, **kwargs):
        """Loads a pipeline folder (or Hub repo) reading safetensors and JSON only.

        Only ``ddpmkit`` and ``diffusers`` classes named in ``model_index.json`` are built, and the folder is checked
        before anything is allocated. ``allow_pickle=True`` opts into legacy ``.bin`` weights, which are pickles
        and can run code: use it only for files you trust.
        """
        return load_pipeline_safely(super().from_pretrained, cls, pretrained_model_name_or_path, allow_pickle, kwargs)

    def _check_call_arguments(self, batch_size, generator, num_inference_steps, output_type, trajectory_steps):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for batch_size {batch_size}; pass one per image")
        steps_max = self.scheduler.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if not 1 <= num_inference_steps <= steps_max:
            raise ValueError(f"num_inference_steps must be between 1 and {steps_max}, got {num_inference_steps}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} must be one of {OUTPUT_TYPES}")
        if trajectory_steps is not None and not isinstance(trajectory_steps, (int, list, tuple)):
            raise ValueError(f"trajectory_steps must be an int or a list of step indices, got {trajectory_steps!r}")

    @property
    def id2label(self) -> dict[int, str] | None:
        """The class names of a class-conditional UNet (id -> name), ``None`` for an unconditional one."""
        names = getattr(self.unet.config, "id2label", None)
        return {int(k): v for k, v in names.items()} if names else None

    def get_label_ids(self, label: "int | str | list[int | str]") -> list[int]:
        """Class ids of names (or ids) of the UNet's ``id2label``, e.g. ``pipe.get_label_ids(["Sneaker", 7])``."""
        labels = label if isinstance(label, (list, tuple)) else [label]
        names = self.id2label
        if names is None:
            raise ValueError("this UNet has no id2label, so it has no named classes; train with --class_conditional")
        by_name = {name.lower(): i for i, name in names.items()}
        ids = []
        for item in labels:
            if isinstance(item, str) and item.strip().lower() in by_name:
                ids.append(by_name[item.strip().lower()])
            elif isinstance(item, str) and item.strip().isdigit() and int(item) in names:
                ids.append(int(item))
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and int(item) in names:
                ids.append(int(item))
            else:
                shown = ", ".join(f"{i} {n!r}" for i, n in names.items())
                raise ValueError(f"class {item!r} is not one this model draws; use an id or a name of: {shown}")
        return ids

    def resolve_class_labels(self, class_labels, batch_size: int) -> tuple[torch.Tensor | None, int | None]:
        """``(labels, null)``: the ``(batch_size,)`` class ids to draw and the null class id of a model trained
        with one (``None`` otherwise). ``labels`` is ``None`` for an unconditional model, and for a model with a null
        class when ``class_labels`` is ``None`` (the caller then draws a class per image)."""
        num_embeds = getattr(self.unet.config, "num_class_embeds", None)
        names = self.id2label
        null = len(names) if names else None
        if class_labels is None:
            if num_embeds and null is None:
                raise ValueError("this UNet is class-conditional without a null class: pass class_labels")
            return None, null
        if not num_embeds:
            raise ValueError("this UNet is unconditional, so it takes no class_labels; leave them out")
        if torch.is_tensor(class_labels):
            labels = class_labels.long().cpu().reshape(-1)
        elif names is not None:
            labels = torch.tensor(self.get_label_ids(class_labels), dtype=torch.long)
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.shape[0] not in (1, batch_size):
            raise ValueError(f"got {labels.shape[0]} class labels for batch_size {batch_size}; pass 1 or 1 per image")
        top = null if null is not None else num_embeds
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= top):
            raise ValueError(f"class_labels must lie in [0, {top - 1}], got {labels.tolist()}")
        return labels.expand(batch_size).clone(), null

    def _denoise(self, sample: torch.Tensor, timestep: int, unet_kwargs: dict) -> torch.Tensor:
        piece = CPU_UNET_PIECE if sample.device.type == "cpu" else sample.shape[0]
        return _in_pieces(self.unet, sample, timestep, unet_kwargs, piece)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        trajectory_steps: int | list[int] | None = None,
        class_labels: "torch.Tensor | int | str | list[int | str] | None" = None,
        guidance_scale: float | None = None,
    ) -> DDPMPipelineOutput | tuple:
        """Generates ``batch_size`` images.

        Args:
            batch_size: number of images. Default: one per class label when ``class_labels`` lists several, else 1.
            generator: a generator, or a list with one per image so each image has its own random stream
                (then an image does not depend on the batch it is drawn in).
            num_inference_steps: denoising steps; 1000 visits every training timestep.
            output_type: ``"pil"`` (mode L for one channel, RGB for three), ``"np"`` (NHWC in [0, 1]) or ``"pt"``
                (NCHW in [0, 1]).
            return_dict: return :class:`DDPMPipelineOutput` rather than a tuple.
            trajectory_steps: record the denoising process: an int ``n`` records ``n`` evenly spaced steps from the
                first (pure noise) to the last; a list names step indices (0 = first, -1 = last).
            class_labels: what a class-conditional UNet draws: one class for all images or one per image, as ids
                or as names of the UNet's ``id2label``. Left out, a model trained with a null class draws a class
                per image at random, every class equally likely, with the image's generator (so an image does not
                depend on its batch).
            guidance_scale: classifier-free guidance (Ho & Salimans 2022) for a model with a null class:
                ``eps_null + s * (eps_class - eps_null)``, both from one batched UNet call per step. 1 is plain
                conditional sampling; larger values trade variety for images that look more like their class; 0 is
                the unconditional model alone (the null class, one UNet call per step). Default:
                ``DEFAULT_GUIDANCE`` (1.5) for a model with a null class, else 1.
        """
        if batch_size is None:  # `pipe(class_labels=[7] * 16)` draws 16 images
            batch_size = len(class_labels) if isinstance(class_labels, (list, tuple)) and class_labels else (
                class_labels.numel() if torch.is_tensor(class_labels) and class_labels.numel() else 1)  # fmt: skip
        self._check_call_arguments(batch_size, generator, num_inference_steps, output_type, trajectory_steps)
        labels, null = self.resolve_class_labels(class_labels, batch_size)
        if guidance_scale is None:
            guidance_scale = DEFAULT_GUIDANCE if null is not None else 1.0
        guided = _check_guidance(guidance_scale, null is not None)
        # 1. pure noise x_T, drawn exactly as diffusers does so both pipelines give the same images
        sample_size = self.unet.config.sample_size
        size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        device = self._execution_device
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        if null is not None and guidance_scale == 0:  # the null half alone: eps_null + 0 * (...)
            labels, guided = torch.full((batch_size,), null, dtype=torch.long), False
        elif labels is None and null is not None:  # after x_T, so the noise is diffusers' for the same generator
            labels = _random_classes(null, batch_size, generator)

        # 2. the timesteps, and which of them to record
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        record = _resolve_trajectory_steps(trajectory_steps, len(timesteps))
        recorded_t, recorded_x, recorded_x0 = [], [], []

        # 3. denoise: x_t -> x_{t-1}
        unet_kwargs = {}
        if labels is not None:  # [class, null] halves of one batch when guided
            labels = torch.cat([labels, torch.full_like(labels, null)]) if guided else labels
            unet_kwargs["class_labels"] = labels.to(device)
        step_kwargs = {"generator": generator}
        if guided and "use_clipped_model_output" in inspect.signature(self.scheduler.step).parameters:
            # DDIM clips its x0 estimate but by default steps with the unclipped noise; guidance pushes x0 far out of
            # range, and the mismatch ruins the samples (3% of guided MNIST 1s were 1s, 100% with this)
            step_kwargs["use_clipped_model_output"] = True
        # the timesteps as host ints, read back once: a device tensor per step would sync the host on every step
        for i, t in enumerate(self.progress_bar(timesteps.tolist())):
            model_input = self.scheduler.scale_model_input(image, t)
            if guided:
                model_input = torch.cat([model_input, model_input])
            model_output = self._denoise(model_input, t, unet_kwargs)
            if guided:
                conditional, unconditional = model_output.chunk(2)
                model_output = unconditional + guidance_scale * (conditional - unconditional)
            step = self.scheduler.step(model_output, t, image, **step_kwargs)
            if i in record:
                recorded_t.append(int(t))
                recorded_x.append(_to_unit(image))
                x0 = getattr(step, "pred_original_sample", None)
                recorded_x0.append(None if x0 is None else _to_unit(x0))
            image = step.prev_sample

        # 4. to [0, 1] and the requested type
        image = _to_unit(image, keep_device=True)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()

        trajectory = None
        if record:
            x0s = None if any(x is None for x in recorded_x0) else torch.stack(recorded_x0)
            trajectory = DenoisingTrajectory(recorded_t, torch.stack(recorded_x), x0s)
        if not return_dict:
            return (image,) if trajectory is None else (image, trajectory)
        return DDPMPipelineOutput(images=image, trajectory=trajectory)


def _in_pieces(unet, sample: torch.Tensor, timestep: int, kwargs: dict, piece: int) -> torch.Tensor:
    """The UNet's prediction for ``sample``, computed ``piece`` images at a time."""
    if sample.shape[0] <= piece:
        return unet(sample, timestep, **kwargs).sample
    return torch.cat([
        unet(sample[i : i + piece], timestep, **{k: v[i : i + piece] for k, v in kwargs.items()}).sample
        for i in range(0, sample.shape[0], piece)
    ])  # fmt: skip


def _random_classes(num_classes: int, batch_size: int, generator) -> torch.Tensor:
    """A class per image, uniform over ``num_classes``: from each image's own generator when given a list."""
    if isinstance(generator, list):
        return torch.cat([torch.randint(num_classes, (1,), generator=g, device=g.device).cpu() for g in generator])
    device = generator.device if generator is not None else "cpu"
    return torch.randint(num_classes, (batch_size,), generator=generator, device=device).cpu()


def _check_guidance(scale, can_guide: bool) -> bool:
    """Whether to guide; ``scale`` must be a finite number of at least 0."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < float("inf"):
        raise ValueError(f"guidance_scale must be a number of at least 0, got {scale!r}")
    if scale != 1 and not can_guide:
        raise ValueError(
            f"guidance_scale {scale} needs a UNet trained with a null class "
            "(ddpmkit train --class_conditional); leave it out or at 1"
        )
    return scale != 1


def _to_unit(x: torch.Tensor, keep_device: bool = False) -> torch.Tensor:
    x = (x / 2 + 0.5).clamp(0, 1)
    return x if keep_device else x.detach().float().cpu()


def _resolve_trajectory_steps(steps: int | list[int] | None, total: int) -> set[int]:
    if steps is None:
        return set()
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"trajectory_steps must be at least 1, got {steps}")
        return set(np.linspace(0, total - 1, min(steps, total)).round().astype(int).tolist())
    resolved = set()
    for index in steps:
        if isinstance(index, bool) or not isinstance(index, int) or not -total <= index < total:
            raise ValueError(f"trajectory step {index!r} is not a step index in [-{total}, {total - 1}]")
        resolved.add(index % total)
    return resolved

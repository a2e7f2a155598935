"""Pictures of samples: image grids, the denoising process as one picture, and as an animated GIF.

Everything here takes images in [0, 1] as a ``(B, C, H, W)`` tensor, a ``(B, H, W, C)`` array or a list of PIL
images (what :class:`~ddpmkit.DDPMPipeline` returns for ``output_type`` "pt", "np" and "pil"), and gives PIL images:
mode ``L`` for one channel, ``RGB`` for three.
"""

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch

from .io import atomic_save_image

if TYPE_CHECKING:  # only the annotations need it: a trajectory is read through its attributes
    from ..pipelines import DenoisingTrajectory

ImageBatch = torch.Tensor | np.ndarray | Sequence[PIL.Image.Image]


def to_pil_images(images: ImageBatch) -> list[PIL.Image.Image]:
    """Converts a batch of images in [0, 1] to PIL images (mode ``L`` or ``RGB``).

    Args:
        images: a ``(B, C, H, W)`` tensor, a ``(B, H, W, C)`` array, or a list of PIL images (returned as they are).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(images.shape)}")
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected a (B, H, W, C) array with 1 or 3 channels, got shape {images.shape}")
        pixels = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
        if pixels.shape[-1] == 1:
            return [PIL.Image.fromarray(p[..., 0], mode="L") for p in pixels]
        return [PIL.Image.fromarray(p, mode="RGB") for p in pixels]
    images = list(images)
    if not all(isinstance(image, PIL.Image.Image) for image in images):
        raise ValueError("images must be a (B, C, H, W) tensor, a (B, H, W, C) array or a list of PIL images")
    return images


def _grid_of_rows(
    rows: list[list[PIL.Image.Image]], padding: int, scale: int, group_size: int | None = None
) -> PIL.Image.Image:
    """Pastes ``rows`` of equally sized images onto one canvas, ``padding`` pixels apart (after scaling by
    ``scale``); with ``group_size``, every ``group_size`` rows are set a further ``padding`` apart from the next."""
    if not rows or not rows[0]:
        raise ValueError("no images to draw")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    first = rows[0][0]
    size = first.size
    mode = "RGB" if any(image.mode != "L" for row in rows for image in row) else "L"
    for row in rows:
        for image in row:
            if image.size != size:
                raise ValueError(f"all images must have the same size; got {image.size} and {size}")
    width, height = size[0] * scale, size[1] * scale
    ncols = max(len(row) for row in rows)
    group_size = group_size or len(rows)
    groups = math.ceil(len(rows) / group_size)
    canvas_w = ncols * width + (ncols + 1) * padding
    canvas_h = len(rows) * height + (len(rows) + 1) * padding + (groups - 1) * padding
    canvas = PIL.Image.new(mode, (canvas_w, canvas_h), color=0)
    for r, row in enumerate(rows):
        top = padding + r * (height + padding) + (r // group_size) * padding
        for c, image in enumerate(row):
            image = image.convert(mode)
            if scale != 1:
                image = image.resize((width, height), PIL.Image.NEAREST)
            canvas.paste(image, (padding + c * (width + padding), top))
    return canvas


def image_grid(images: ImageBatch, ncols: int | None = None, padding: int = 2, scale: int = 1) -> PIL.Image.Image:
    """One picture of many images, row by row, on a black background (the tutorial's 10x10 grid for 100 images).

    Args:
        images: the images, any batch that :func:`to_pil_images` takes.
        ncols: images per row; by default the smallest square that holds them all (8 for 64 images).
        padding: black pixels between images and around the edge.
        scale: each image is enlarged this many times (nearest neighbour, so pixels stay sharp).
    """
    images = to_pil_images(images)
    if not images:
        raise ValueError("image_grid needs at least one image")
    if ncols is None:
        ncols = math.ceil(math.sqrt(len(images)))
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    rows = [images[i : i + ncols] for i in range(0, len(images), ncols)]
    return _grid_of_rows(rows, padding, scale)


def labelled_grid(rows: list[ImageBatch], labels: list[str], padding: int = 2, scale: int = 1) -> PIL.Image.Image:
    """A grid of one row per label (e.g. one class per row), each row's label written in a margin on its left."""
    import PIL.ImageDraw
    import PIL.ImageFont

    rows = [to_pil_images(row) for row in rows]
    if len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")
    grid = _grid_of_rows(rows, padding, scale)
    font = PIL.ImageFont.load_default()
    draw = PIL.ImageDraw.Draw(PIL.Image.new("L", (1, 1)))
    margin = max(draw.textlength(str(label), font=font) for label in labels) + 2 * padding + 4
    canvas = PIL.Image.new(grid.mode, (grid.width + int(margin), grid.height), color=0)
    canvas.paste(grid, (int(margin), 0))
    draw = PIL.ImageDraw.Draw(canvas)
    height = rows[0][0].height * scale
    white = 255 if canvas.mode == "L" else (255, 255, 255)
    for r, label in enumerate(labels):
        top = padding + r * (height + padding)
        draw.text((padding + 2, top + height / 2), str(label), fill=white, font=font, anchor="lm")
    return canvas


def _trajectory_columns(
    trajectory: "DenoisingTrajectory", final_images: ImageBatch | None, show_x0: bool
) -> list[tuple[list[PIL.Image.Image], list[PIL.Image.Image] | None]]:
    """For every recorded step (and the final images, if given): the ``x_t`` and, if asked, ``x_0`` images."""
    if show_x0 and trajectory.pred_original_samples is None:
        raise ValueError(
            "this trajectory has no predicted x_0 (the scheduler does not give one); use show_x0=False or a "
            "DDPM or DDIM scheduler"
        )
    columns = []
    for step in range(len(trajectory.timesteps)):
        x_t = to_pil_images(trajectory.samples[step])
        x_0 = to_pil_images(trajectory.pred_original_samples[step]) if show_x0 else None
        columns.append((x_t, x_0))
    if final_images is not None:
        final = to_pil_images(final_images)
        if len(final) != trajectory.samples.shape[1]:
            raise ValueError(
                f"got {len(final)} final images for a trajectory of {trajectory.samples.shape[1]} samples"
            )
        columns.append((final, final if show_x0 else None))
    if not columns:
        raise ValueError("the trajectory records no steps; pass trajectory_steps to the pipeline")
    return columns


def trajectory_picture(
    trajectory: "DenoisingTrajectory",
    final_images: ImageBatch | None = None,
    show_x0: bool = False,
    padding: int = 2,
    scale: int = 1,
) -> PIL.Image.Image:
    """The denoising process as one picture: a row per sample, a column per recorded step, from pure noise on the
    left to the image on the right.

    Args:
        trajectory: what the pipeline recorded with ``trajectory_steps``.
        final_images: the pipeline's output images, appended as the last column (the recorded ``x_t`` are the
            *inputs* of their steps, so the finished image is not among them).
        show_x0: under each row of ``x_t``, a row of the model's estimate of the final image at that step.
        padding: black pixels between images; pairs of rows (with ``show_x0``) are set apart by twice as much.
        scale: each image is enlarged this many times.

    Example:

    >>> out = pipe(batch_size=4, num_inference_steps=50, trajectory_steps=9, output_type="pt")  # doctest: +SKIP
    >>> trajectory_picture(out.trajectory, out.images, show_x0=True).save("trajectory.png")  # doctest: +SKIP
    """
    columns = _trajectory_columns(trajectory, final_images, show_x0)
    rows = []
    for sample in range(len(columns[0][0])):
        rows.append([x_t[sample] for x_t, _ in columns])
        if show_x0:
            rows.append([x_0[sample] for _, x_0 in columns])
    return _grid_of_rows(rows, padding, scale, group_size=2 if show_x0 else None)


def trajectory_frames(
    trajectory: "DenoisingTrajectory",
    final_images: ImageBatch | None = None,
    show_x0: bool = False,
    padding: int = 2,
    scale: int = 1,
) -> list[PIL.Image.Image]:
    """The denoising process as animation frames: one frame per recorded step, the samples side by side (and,
    with ``show_x0``, their predicted x_0 beneath). Arguments as in :func:`trajectory_picture`."""
    columns = _trajectory_columns(trajectory, final_images, show_x0)
    return [_grid_of_rows([x_t] + ([x_0] if show_x0 else []), padding, scale) for x_t, x_0 in columns]


def save_gif(
    frames: Sequence[PIL.Image.Image], path: str | os.PathLike, frame_ms: int = 80, last_frame_ms: int = 1500
) -> None:
    """Writes ``frames`` as an endlessly looping animated GIF, holding the last frame for ``last_frame_ms``."""
    frames = list(frames)
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    for name, value in (("frame_ms", frame_ms), ("last_frame_ms", last_frame_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 10:
            raise ValueError(f"{name} must be an integer of at least 10 milliseconds, got {value!r}")
    durations = [frame_ms] * (len(frames) - 1) + [last_frame_ms]
    atomic_save_image(
        frames[0],
        path,
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        optimize=False,
        disposal=1,
    )

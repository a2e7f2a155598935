"""``ddpmkit sample``: generate images as one grid PNG and, with ``--out_dir``, one PNG per image."""

import argparse
import secrets
import time

from ..pipelines import DEFAULT_GUIDANCE
from ..pipelines.sampling import SAMPLERS
from .common import (
    UsageError,
    add_model,
    add_quiet,
    add_runtime,
    add_sampling,
    check_allocation,
    check_output_dir,
    check_output_file,
    check_steps,
    load_pipeline,
    one_line,
    positive_int,
    save_image,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample",
        help="generate images and save them as a grid (and one file each)",
        description="Generate images with a pipeline folder and save them as one grid PNG and, with --out_dir, "
        "as one PNG per image.",
        epilog="example: ddpmkit sample --model pretrained/mnist --num_images 100 --seed 0",
    )
    add_model(parser)
    parser.add_argument("--num_images", type=positive_int, default=64, help="images to generate (default: 64)")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="images generated at once (default: 32)")
    add_sampling(parser)
    parser.add_argument(
        "--class", dest="class_label", default=None, metavar="C",
        help="for a class-conditional model: the class to draw, by id or name (7, Sneaker), or 'all' for a grid "
        "with one labelled row per class (--num_images per class then); left out, a class per image at random",
    )  # fmt: skip
    parser.add_argument(
        "--guidance_scale", type=float, default=None, metavar="S",
        help=f"classifier-free guidance of a class-conditional model (default: {DEFAULT_GUIDANCE}; 1: none; 0: the "
        "unconditional model); larger draws images more typical of their class, less varied",
    )  # fmt: skip
    parser.add_argument("--scale", type=positive_int, default=1, help="enlarge every image N times in the grid")
    parser.add_argument("--out", default="samples.png", help="the grid picture (default: %(default)s)")
    parser.add_argument(
        "--out_dir", default=None, metavar="DIR", help="also save each image as DIR/<scheduler><steps>_seed<seed>.png"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace images already in --out_dir (refused otherwise)"
    )
    add_runtime(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..pipelines.sampling import sample_batches
    from ..utils.images import image_grid, labelled_grid, to_pil_images

    steps = args.steps or SAMPLERS[args.scheduler]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    out = check_output_file(args.out)
    names = [f"{args.scheduler}{steps}_seed{seed + i}.png" for i in range(args.num_images)]
    out_dir = check_output_dir(args.out_dir) if args.out_dir is not None else None
    if args.class_label is None:
        _check_taken(args, out_dir, names)
    pipe = load_pipeline(args, args.scheduler)
    check_steps(pipe, steps)
    check_allocation(pipe, min(args.batch_size, args.num_images), f"--batch_size {args.batch_size}")
    check_allocation(pipe, args.num_images, f"--num_images {args.num_images} at --scale {args.scale}", args.scale)
    labels, guidance, classes = _classes(pipe, args)
    total = len(labels) if isinstance(labels, list) else args.num_images
    if args.class_label is not None:
        ids = labels if isinstance(labels, list) else [labels] * total
        names = [f"{args.scheduler}{steps}_class{ids[i]}_seed{seed + i}.png" for i in range(total)]
        _check_taken(args, out_dir, names)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, desc="denoising")
    start = time.perf_counter()
    images = []
    try:
        batches = sample_batches(pipe, total, steps, seed, args.batch_size, not args.quiet, class_labels=labels,
                                 guidance_scale=guidance)  # fmt: skip
        for first, batch in batches:
            batch = to_pil_images(batch)
            if out_dir is not None:
                for i, image in enumerate(batch):
                    save_image(image, out_dir / names[first + i])
            images.extend(batch)
    except RuntimeError as e:
        if (args.dtype or "float32") != "float32":
            raise UsageError(
                f"sampling in --dtype {args.dtype} failed on {pipe.device} ({one_line(e)}); use --dtype float32"
            ) from None
        raise
    seconds = time.perf_counter() - start
    if classes is not None:
        per = args.num_images
        grid = labelled_grid([images[i * per : (i + 1) * per] for i in range(len(classes))],
                             [pipe.id2label[c] for c in classes], scale=args.scale)  # fmt: skip
    else:
        grid = image_grid(images, scale=args.scale)
    save_image(grid, out)
    where = f" and {total} files in {out_dir}" if out_dir is not None else ""
    what = f", class {args.class_label}" if args.class_label is not None else ""
    what += f", guidance {guidance:g}" if pipe.id2label is not None else ""
    print(
        f"wrote {out}{where}: {total} images, {args.scheduler} {steps} steps, seed {seed}{what}, "
        f"{seconds:.1f} s on {pipe.device}"
    )
    return 0


def _classes(pipe, args) -> tuple:
    """``(class_labels, guidance_scale, classes of the rows or None)`` for ``--class`` and ``--guidance_scale``."""
    if args.class_label is None:
        if pipe.id2label is None and args.guidance_scale not in (None, 1):
            raise UsageError(f"--guidance_scale: {args.model} is not class-conditional (its UNet has no id2label)")
        if pipe.id2label is None:
            return None, 1.0, None
        guidance = DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale
        if not 0 <= guidance <= 100:
            raise UsageError(f"--guidance_scale must be between 0 and 100 (1: no guidance), got {guidance}")
        return None, guidance, None  # a class per image at random
    if pipe.id2label is None:
        raise UsageError(
            f"--class {args.class_label}: {args.model} is not class-conditional (its UNet has no id2label); train "
            "one with ddpmkit train --class_conditional"
        )
    guidance = DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale
    if not 0 <= guidance <= 100:
        raise UsageError(f"--guidance_scale must be between 0 and 100 (1: no guidance), got {args.guidance_scale}")
    if args.class_label.strip().lower() == "all":
        classes = sorted(pipe.id2label)
        labels = [c for c in classes for _ in range(args.num_images)]
        check_allocation(pipe, len(labels), f"--class all: {len(labels)} images at --scale {args.scale}", args.scale)
        return labels, guidance, classes
    try:
        (label,) = pipe.get_label_ids(args.class_label)
    except ValueError as e:
        raise UsageError(f"--class {one_line(e)}") from None
    return label, guidance, None


def _check_taken(args, out_dir, names: list[str]) -> None:
    taken = [name for name in names if out_dir is not None and (out_dir / name).exists()]
    if taken and not args.overwrite:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise UsageError(
            f"--out_dir {args.out_dir} already holds {taken[0]}{more}; pass --overwrite, another --seed or "
            "another --out_dir"
        )

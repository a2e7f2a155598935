"""``ddpmkit sample``: generate images as one grid PNG and, with ``--out_dir``, one PNG per image."""

import argparse
import secrets
import time

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
    from ..utils.images import image_grid, to_pil_images

    steps = args.steps or SAMPLERS[args.scheduler]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    out = check_output_file(args.out)
    names = [f"{args.scheduler}{steps}_seed{seed + i}.png" for i in range(args.num_images)]
    out_dir = None
    if args.out_dir is not None:
        out_dir = check_output_dir(args.out_dir)
        taken = [name for name in names if (out_dir / name).exists()]
        if taken and not args.overwrite:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise UsageError(
                f"--out_dir {args.out_dir} already holds {taken[0]}{more}; pass --overwrite, another --seed or "
                "another --out_dir"
            )
    pipe = load_pipeline(args, args.scheduler)
    check_steps(pipe, steps)
    check_allocation(pipe, min(args.batch_size, args.num_images), f"--batch_size {args.batch_size}")
    check_allocation(pipe, args.num_images, f"--num_images {args.num_images} at --scale {args.scale}", args.scale)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, desc="denoising")
    start = time.perf_counter()
    images = []
    try:
        for first, batch in sample_batches(pipe, args.num_images, steps, seed, args.batch_size, not args.quiet):
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
    grid = image_grid(images, scale=args.scale)
    save_image(grid, out)
    where = f" and {args.num_images} files in {out_dir}" if out_dir is not None else ""
    print(
        f"wrote {out}{where}: {args.num_images} images, {args.scheduler} {steps} steps, seed {seed}, "
        f"{seconds:.1f} s on {pipe.device}"
    )
    return 0

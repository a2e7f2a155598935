"""``ddpmkit trajectory``: the denoising process of a few samples as one picture and an animated GIF."""

import argparse
import secrets
import time
from pathlib import Path

from ..pipelines.sampling import SAMPLERS
from .common import (
    UsageError,
    add_model,
    add_quiet,
    add_runtime,
    add_sampling,
    check_allocation,
    check_output_file,
    check_steps,
    load_pipeline,
    one_line,
    positive_int,
    save_image,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "trajectory",
        help="picture the denoising process of a few samples, as a PNG and an animated GIF",
        description="Generate a few samples and save their denoising process: a picture with a row per sample and "
        "a column per evenly spaced step, from pure noise to the image (with --show_x0, each x_t row has the "
        "model's estimate of the final image beneath it), and an animated GIF.",
        epilog="example: ddpmkit trajectory --model pretrained/mnist --num_samples 4 --num_frames 10 --show_x0",
    )
    add_model(parser)
    parser.add_argument("--num_samples", type=positive_int, default=4, help="rows of the picture (default: 4)")
    parser.add_argument("--num_frames", type=positive_int, default=10,
                        help="columns of the picture, pure noise first and the final image last (default: 10)")
    parser.add_argument("--gif_frames", type=positive_int, default=50,
                        help="frames of the GIF, at most steps + 1 (default: 50)")  # fmt: skip
    parser.add_argument(
        "--show_x0", action="store_true", help="also show the predicted x_0 at each step (ddpm and ddim only)"
    )
    add_sampling(parser)
    parser.add_argument("--scale", type=positive_int, default=1, help="enlarge every image N times in the pictures")
    parser.add_argument("--out", default="trajectory.png", help="the picture (default: %(default)s)")
    parser.add_argument("--gif", default=None, help="the animation (default: --out with the suffix .gif)")
    add_runtime(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..pipelines import DenoisingTrajectory
    from ..pipelines.sampling import image_generators
    from ..utils.images import save_gif, trajectory_frames, trajectory_picture

    steps = args.steps or SAMPLERS[args.scheduler]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.num_frames < 2:
        raise UsageError(f"--num_frames must be at least 2 (pure noise and the final image), got {args.num_frames}")
    if args.num_frames > steps + 1:
        raise UsageError(
            f"--num_frames {args.num_frames} needs at least {args.num_frames - 1} steps, got --steps {steps}; "
            "lower --num_frames or raise --steps"
        )
    if args.show_x0 and args.scheduler == "dpmsolver":
        raise UsageError("--show_x0 needs a scheduler that predicts x_0 at every step; use --scheduler ddpm or ddim")
    out = check_output_file(args.out)
    gif = check_output_file(args.gif or str(Path(args.out).with_suffix(".gif")), suffixes=(".gif",))
    pipe = load_pipeline(args, args.scheduler)
    check_steps(pipe, steps)
    # column k shows the input of step k; column `steps` is the final image
    columns = np.linspace(0, steps, args.num_frames).round().astype(int).tolist()
    gif_columns = np.unique(np.linspace(0, steps, min(args.gif_frames, steps + 1)).round().astype(int)).tolist()
    recorded = sorted({c for c in columns + gif_columns if c < steps})
    rows = 2 if args.show_x0 else 1
    check_allocation(pipe, args.num_samples * (len(recorded) + 1) * rows, "the recorded trajectory", args.scale)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, desc="denoising")
    start = time.perf_counter()
    try:
        result = pipe(batch_size=args.num_samples, generator=image_generators(seed, 0, args.num_samples),
                      num_inference_steps=steps, output_type="pt", trajectory_steps=recorded)  # fmt: skip
    except RuntimeError as e:
        if (args.dtype or "float32") != "float32":
            raise UsageError(f"sampling in --dtype {args.dtype} failed ({one_line(e)}); use --dtype float32") from None
        raise
    seconds = time.perf_counter() - start
    trajectory = result.trajectory

    def select(wanted: list[int]) -> DenoisingTrajectory:
        rows = [recorded.index(c) for c in wanted if c < steps]
        x0 = trajectory.pred_original_samples
        return DenoisingTrajectory(
            [trajectory.timesteps[r] for r in rows], trajectory.samples[rows], None if x0 is None else x0[rows]
        )

    picture = trajectory_picture(select(columns), result.images, show_x0=args.show_x0, scale=args.scale)
    save_image(picture, out)
    frames = trajectory_frames(select(gif_columns), result.images, show_x0=args.show_x0, scale=args.scale)
    try:
        save_gif(frames, gif)
    except OSError as e:
        raise UsageError(f"could not write {gif}: {one_line(e)}") from None
    timesteps = [str(trajectory.timesteps[recorded.index(c)]) for c in columns if c < steps] + ["final"]
    print(
        f"wrote {out} and {gif} ({len(frames)} frames): {args.num_samples} samples, {args.scheduler} {steps} steps, "
        f"seed {seed}, {seconds:.1f} s on {pipe.device}; columns t = {', '.join(timesteps)}"
    )
    return 0

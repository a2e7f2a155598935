"""Sample a ddpmkit pipeline folder through the Python API: a grid of images, a picture of the denoising process
and its animated GIF (what ``ddpmkit sample`` and ``ddpmkit trajectory`` do, written out).

    python examples/generate.py --model mnist-pipeline --scheduler ddim --steps 50 --output_dir generated

No trained pipeline at hand? ``--make_tiny DIR`` writes a tiny untrained one: it draws noise, but every command
runs on it, offline, in seconds. It is these lines of Python:

```python
from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler, model_preset

unet = ConvUNet2DModel(sample_size=32, in_channels=1, **model_preset("tiny"))
DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler()).save_pretrained("tiny-pipeline")
```

then ``ddpmkit sample --model tiny-pipeline``.
"""

import argparse
from pathlib import Path

import torch

from ddpmkit import ConvUNet2DModel, DDPMPipeline, DenoisingTrajectory, LinearDDPMScheduler, model_preset
from ddpmkit.pipelines.sampling import SAMPLERS, image_generators, with_sampler
from ddpmkit.utils.images import image_grid, save_gif, trajectory_frames, trajectory_picture


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Sample a ddpmkit pipeline folder and picture its denoising.")
    parser.add_argument("--model", help="a pipeline folder written by save_pretrained")
    parser.add_argument("--make_tiny", metavar="DIR", help="write a tiny untrained pipeline folder to DIR and stop")
    parser.add_argument("--output_dir", default="generated", help="where the pictures go (default: %(default)s)")
    parser.add_argument("--num_images", type=int, default=16, help="images in the grid (default: 16)")
    parser.add_argument("--num_trajectories", type=int, default=4, help="rows of the trajectory picture")
    parser.add_argument("--num_frames", type=int, default=10, help="columns of the trajectory picture")
    parser.add_argument("--scheduler", choices=SAMPLERS, default="ddim", help="sampler (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="image i is drawn with seed + i (default: 0)")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.make_tiny is None):
        parser.error("pass --model DIR to sample, or --make_tiny DIR to write a tiny pipeline")
    for name in ("num_images", "num_trajectories", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 2 <= args.num_frames <= args.steps + 1:
        parser.error(f"--num_frames must be between 2 and --steps + 1 = {args.steps + 1}, got {args.num_frames}")
    return args


def make_tiny_pipeline(path: str | Path) -> DDPMPipeline:
    """The docstring's snippet: a tiny untrained pipeline, saved to ``path``."""
    unet = ConvUNet2DModel(sample_size=32, in_channels=1, **model_preset("tiny"))
    pipe = DDPMPipeline(unet=unet, scheduler=LinearDDPMScheduler())
    pipe.save_pretrained(path)
    return pipe


def main(args: argparse.Namespace) -> None:
    if args.make_tiny:
        make_tiny_pipeline(args.make_tiny)
        print(f"wrote {args.make_tiny}; try: ddpmkit sample --model {args.make_tiny}")
        return

    # 1. the pipeline, with the chosen scheduler built from the folder's scheduler config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = with_sampler(DDPMPipeline.from_pretrained(args.model).to(device), args.scheduler)

    # 2. one generator per image, so an image depends on its seed alone, not on the batch it is drawn in
    generators = image_generators(args.seed, 0, args.num_images)
    out = pipe(
        batch_size=args.num_images,
        generator=generators,
        num_inference_steps=args.steps,
        output_type="pt",
        trajectory_steps=args.num_frames - 1,  # the recorded x_t; the final images make the last column
    )

    # 3. the pictures
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    image_grid(out.images).save(output_dir / "samples.png")
    rows = min(args.num_trajectories, args.num_images)
    x0 = out.trajectory.pred_original_samples  # None for DPM-Solver++, which does not predict x_0
    trajectory = DenoisingTrajectory(
        out.trajectory.timesteps, out.trajectory.samples[:, :rows], None if x0 is None else x0[:, :rows]
    )
    show_x0 = x0 is not None
    trajectory_picture(trajectory, out.images[:rows], show_x0=show_x0).save(output_dir / "trajectory.png")
    save_gif(trajectory_frames(trajectory, out.images[:rows], show_x0=show_x0), output_dir / "trajectory.gif")
    print(f"wrote samples.png, trajectory.png and trajectory.gif to {output_dir}")


if __name__ == "__main__":
    main(parse_args())

"""``ddpmkit convert-tutorial``: weights trained with the tutorial's code, as a pipeline folder."""

import argparse
import os
from pathlib import Path

from .common import UsageError, add_quiet, one_line, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert-tutorial",
        help="convert a checkpoint of the original tutorial into a pipeline folder",
        description="Convert a checkpoint saved by the original tutorial's train.py (torch.save of the UNet) into "
        "a pipeline folder of safetensors and JSON, with the tutorial's sampler.",
        epilog="example: ddpmkit convert-tutorial number_model.pt --out mnist-pipeline --allow-pickle",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the tutorial's .pt file")
    parser.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    parser.add_argument(
        "--allow-pickle",
        "--allow_pickle",
        dest="allow_pickle",
        action="store_true",
        help="the tutorial saved whole pickled models, which can run code when loaded: pass this only for a file "
        "you trust",
    )
    parser.add_argument(
        "--sample_size",
        type=positive_int,
        default=None,
        help="the image size the model was trained at (the tutorial's IMG_SIZE; default: 32)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..convert import convert_tutorial_checkpoint

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint {checkpoint} is not a file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder to write the pipeline into")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite or name a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {one_line(e)}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out} is not writable")
    try:
        size = {} if args.sample_size is None else {"sample_size": args.sample_size}
        pipe = convert_tutorial_checkpoint(checkpoint, out, allow_pickle=args.allow_pickle, **size)
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    unet = pipe.unet.config
    print(
        f"wrote {out}: {type(pipe.unet).__name__} {unet.in_channels} channel(s) {unet.sample_size}px, "
        f"{type(pipe.scheduler).__name__}; try `ddpmkit sample --model {out}`"
    )
    return 0

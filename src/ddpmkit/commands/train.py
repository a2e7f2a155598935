"""``ddpmkit train``: train a DDPM image generator into a pipeline folder (the flags are the fields of
:class:`~ddpmkit.training.TrainingConfig`). ``accelerate launch -m ddpmkit train ...`` runs it on several processes
or GPUs."""

import argparse
import dataclasses

from .common import add_config_arguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..training import TrainingConfig

    parser = subparsers.add_parser(
        "train",
        help="train a DDPM on a dataset and save it as a pipeline folder",
        description="Train a DDPM image generator with Accelerate and save it as a diffusers pipeline folder with "
        "its model card. Interrupted runs continue with --resume_from_checkpoint latest.",
        epilog="example: ddpmkit train --dataset mnist --train_data_files data/mnist/train.parquet "
        "--max_train_steps 2300 --output_dir ddpm-mnist",
    )
    add_config_arguments(parser, TrainingConfig)
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default=None, choices=("cpu", "cuda"),
                       help="cpu trains on the CPU even with a GPU present (as --cpu); default: cuda when available")
    group.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                       help="autocast precision, as --mixed_precision no / bf16 / fp16")  # fmt: skip
    parser.set_defaults(run=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`~ddpmkit.training.TrainingConfig` that parsed flags describe."""
    from ..training import TrainingConfig

    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    options = {k: v for k, v in vars(args).items() if k in fields}
    if args.device == "cpu":
        options["cpu"] = True
    if args.dtype is not None and options.get("mixed_precision") is None:
        options["mixed_precision"] = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[args.dtype]
    return TrainingConfig(**options)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    train(config_from_args(args))
    return 0

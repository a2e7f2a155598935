"""``ddpmkit preview``: the tutorial's 10x10 grid of random training images."""

import argparse

from .common import UsageError, add_config_arguments, add_quiet, check_output_file, one_line, positive_int, seed_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..training import TrainingConfig

    parser = subparsers.add_parser(
        "preview",
        help="save a 10x10 grid of random training images",
        description="Save a grid of random images of a training dataset (the same dataset flags as ddpmkit train), "
        "to check what the model will learn from.",
        epilog="example: ddpmkit preview --dataset mnist --train_data_files mnist/train.parquet --out mnist.png",
    )
    add_config_arguments(parser, TrainingConfig, groups=("data",))
    parser.add_argument("--out", default="preview.png", help="the grid picture (default: %(default)s)")
    parser.add_argument("--nrow", type=positive_int, default=10, help="images per row and column (default: 10)")
    parser.add_argument("--seed", type=seed_int, default=0, help="which random images (default: 0)")
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..data import load_image_dataset, save_preview_grid
    from ..training import TrainingConfig
    from .common import quiet_libraries

    out = check_output_file(args.out)
    options = ("dataset", "dataset_name", "dataset_config_name", "train_data_dir", "train_data_files",
               "image_column", "label_column", "split", "resolution", "channels", "center_crop", "cache_dir",
               "max_train_samples")  # fmt: skip
    data = {name: getattr(args, name) for name in options}
    if data["resolution"] is None:  # the size a training run in fp32 would use
        config = TrainingConfig(dataset=args.dataset, train_data_dir=args.train_data_dir)
        config.fill_resolution()
        data["resolution"] = config.resolution
    try:
        with quiet_libraries(args.quiet):
            dataset = load_image_dataset(**data)
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    try:
        save_preview_grid(dataset, out, nrow=args.nrow, seed=args.seed)
    except ValueError as e:
        raise UsageError(one_line(e)) from None
    except OSError as e:
        raise UsageError(f"could not write {out}: {one_line(e)}") from None
    print(f"wrote {out}: {min(args.nrow**2, len(dataset))} of {len(dataset)} images")
    return 0

"""``ddpmkit info``: describe a pipeline folder without loading its weights."""

import argparse
import json
import math

from .common import UsageError, add_model, add_quiet, check_model_folder, one_line


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="describe a pipeline folder without loading its weights",
        description="Describe a pipeline folder: its components, the UNet's config and parameter count (read from "
        "the safetensors header, no weights are loaded), the scheduler, and how it was trained and scored (read "
        "from training_args.json and the evaluation files). The folder passes the same checks as loading it.",
        epilog="example: ddpmkit info --model pretrained/mnist",
    )
    add_model(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def describe(root) -> dict:
    """What ``ddpmkit info`` shows, read through the loading checks (no link out of the folder, no path in a
    component name, known classes only)."""
    from ..hub import read_card_record
    from ..pipelines.loading import check_model_index
    from ..utils.loading import SAFE_WEIGHTS, check_local_tree, read_json, read_safetensors_header

    check_local_tree(root)
    index = read_json(root / "model_index.json")
    classes = check_model_index(index)
    info: dict = {"folder": str(root), "pipeline": index.get("_class_name"), "components": {}}
    for name, cls in sorted(classes.items(), key=lambda item: item[0] != "unet"):
        folder = root / name
        entry = {"class": f"{cls.__module__.split('.')[0]}.{cls.__name__}"}
        config = read_json(folder / getattr(cls, "config_name", "config.json"))
        entry["config"] = {k: v for k, v in config.items() if not k.startswith("_")}
        weights = folder / SAFE_WEIGHTS
        if weights.is_file():
            header = read_safetensors_header(weights)
            entry["weights"] = {
                "file": weights.name, "bytes": weights.stat().st_size, "tensors": len(header),
                "parameters": sum(math.prod(shape) for shape, _ in header.values()),
                "dtypes": sorted({dtype for _, dtype in header.values()}),
            }  # fmt: skip
        info["components"][name] = entry
    record = read_card_record(root)
    if record:
        info["card"] = record
    return info


def run(args: argparse.Namespace) -> int:
    root = check_model_folder(args.model)
    try:
        info = describe(root)
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"folder      {root}")
    print(f"pipeline    {info['pipeline']}")
    for name, entry in info["components"].items():
        print(f"{name:<11} {entry['class']}")
        weights = entry.get("weights")
        if weights:
            print(f"{'':<11} {weights['parameters']:,} parameters ({'/'.join(weights['dtypes'])}, "
                  f"{_size(weights['bytes'])} in {weights['file']})")  # fmt: skip
        for key, value in entry["config"].items():
            print(f"{'':<11}   {key} = {json.dumps(value)}")
    for section, values in info.get("card", {}).items():
        if isinstance(values, dict):
            print(f"{section:<11}")
            for key, value in values.items():
                shown = value if isinstance(value, str) else json.dumps(value, default=str)
                print(f"{'':<11}   {key} = {shown}")
        else:
            shown = values if isinstance(values, str) else json.dumps(values, default=str)
            print(f"{section:<11} {shown}")
    return 0


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

"""Command line of the evaluation: ``train-classifier`` and ``evaluate``.

``add_evaluate_parser`` / ``add_train_classifier_parser`` add the subcommands to any ``argparse`` subparsers, so
the project's main command line can offer them unchanged.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ..cli import UsageError as _UsageError
from ..cli import positive_int as _positive_int


def add_train_classifier_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``train-classifier``: trains the classifier that the classifier FD is measured with."""
    parser = subparsers.add_parser(
        "train-classifier",
        help="train the small classifier used for the classifier Fréchet distance",
        description="Trains an ImageClassifier on a labelled dataset's train split, measures its accuracy on the "
        "test split and saves it (safetensors) with a training.json holding the accuracy and this command.",
    )
    parser.add_argument(
        "--dataset", required=True, help="folder with train.parquet and test.parquet (e.g. ../shared/data/mnist)"
    )
    parser.add_argument("--output", required=True, help="folder to write the classifier to")
    parser.add_argument("--resolution", type=_positive_int, default=32, help="image side the classifier takes")
    parser.add_argument("--epochs", type=_positive_int, default=2, help="passes over the train split")
    parser.add_argument("--batch_size", type=_positive_int, default=128, help="images per training step")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    parser.add_argument(
        "--max_train_samples",
        type=_positive_int,
        default=None,
        help="train on the first N images only (for quick trials)",
    )
    parser.add_argument(
        "--num_threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads; 1 is fastest for this small network on a busy CPU",
    )
    parser.set_defaults(func=train_classifier_command)
    return parser


def train_classifier_command(args: argparse.Namespace) -> int:
    """Runs ``train-classifier``; bad input is one line on stderr and exit code 2."""
    try:
        return _train_classifier(args)
    except _UsageError as e:
        print(f"ddpmkit train-classifier: error: {e}", file=sys.stderr)
        return 2


def _train_classifier(args: argparse.Namespace) -> int:
    import torch

    from .classifier import accuracy, train_classifier
    from .dataset import load_labelled_images

    torch.set_num_threads(args.num_threads)
    try:
        train = load_labelled_images(args.dataset, "train", args.resolution, max_samples=args.max_train_samples)
        test = load_labelled_images(args.dataset, "test", args.resolution, channels=train.images.shape[1])
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if train.labels is None or test.labels is None:
        raise _UsageError(f"dataset {args.dataset} has no label column; the classifier needs labels")
    start = time.time()
    model = train_classifier(
        train.images,
        train.labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    train_seconds = time.time() - start
    test_accuracy = accuracy(model, test.images, test.labels)
    output = Path(args.output)
    model.save_pretrained(output)
    record = {
        "test_accuracy": round(test_accuracy, 5),
        "train_dataset": train.name,
        "test_dataset": test.name,
        "train_samples": len(train.images),
        "test_samples": len(test.images),
        "train_seconds": round(train_seconds, 1),
        "num_threads": args.num_threads,
        "command": "python -m ddpmkit.evaluation " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (output / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {test_accuracy:.4f} after {train_seconds:.0f} s of training; saved to {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpmkit.evaluation", description="Sample-quality metrics.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_classifier_parser(subparsers)
    from .evaluate import add_evaluate_parser

    add_evaluate_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)

"""``ddpmkit train-classifier``: the small classifier that the classifier FD is measured with."""

import argparse
import shlex
import sys
import time
from pathlib import Path

from .common import UsageError, add_quiet, one_line, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-classifier",
        help="train the small classifier used for the classifier Fréchet distance",
        description="Trains an ImageClassifier on a labelled dataset's train split, measures its accuracy on the "
        "test split and saves it (safetensors) with a training.json holding the accuracy and this command.",
        epilog="example: ddpmkit train-classifier --dataset data/fashion_mnist --output fashion_classifier",
    )
    parser.add_argument(
        "--dataset", required=True, help="folder with train.parquet and test.parquet (e.g. ../shared/data/mnist)"
    )
    parser.add_argument("--output", required=True, help="folder to write the classifier to")
    parser.add_argument("--resolution", type=positive_int, default=32, help="image side the classifier takes")
    parser.add_argument("--epochs", type=positive_int, default=2, help="passes over the train split")
    parser.add_argument("--batch_size", type=positive_int, default=128, help="images per training step")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    parser.add_argument("--max_train_samples", type=positive_int, default=None,
                        help="train on the first N images only (for quick trials)")  # fmt: skip
    parser.add_argument("--num_threads", type=positive_int, default=1,
                        help="torch CPU threads; 1 is fastest for this small network on a busy CPU")  # fmt: skip
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.classifier import accuracy, train_classifier
    from ..evaluation.dataset import load_labelled_images
    from ..utils.io import atomic_write_json

    torch.set_num_threads(args.num_threads)
    try:
        train = load_labelled_images(args.dataset, "train", args.resolution, max_samples=args.max_train_samples)
        test = load_labelled_images(args.dataset, "test", args.resolution, channels=train.images.shape[1])
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    if train.labels is None or test.labels is None:
        raise UsageError(f"dataset {args.dataset} has no label column; the classifier needs labels")
    start = time.time()
    model = train_classifier(train.images, train.labels, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, seed=args.seed)  # fmt: skip
    train_seconds = time.time() - start
    test_accuracy = accuracy(model, test.images, test.labels)
    output = Path(args.output)
    model.save_pretrained(output)
    atomic_write_json(output / "training.json", {
        "test_accuracy": round(test_accuracy, 5), "train_dataset": train.name, "test_dataset": test.name,
        "train_samples": len(train.images), "test_samples": len(test.images), "train_seconds": round(train_seconds, 1),
        "num_threads": args.num_threads, "command": "ddpmkit " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    })  # fmt: skip
    print(f"test accuracy {test_accuracy:.4f} after {train_seconds:.0f} s of training; saved to {output}")
    return 0

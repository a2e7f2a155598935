"""``ddpmkit evaluate``: score a saved pipeline beside the real-data floor."""

import argparse
import json
import sys
from pathlib import Path

from ..evaluation.evaluate import SCHEDULERS
from ..pipelines import DEFAULT_GUIDANCE
from ..pipelines.sampling import SAMPLERS
from ..utils.device import describe_device
from .common import (
    UsageError,
    add_model,
    add_quiet,
    add_runtime,
    add_sampling,
    check_allocation,
    check_model_folder,
    check_output_dir,
    check_steps,
    load_pipeline,
    one_line,
    positive_int,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a saved pipeline: classifier FD, confidence, class coverage and FID beside the real-data floor",
        description="Generates samples from a saved pipeline (image i from seed i, as ddpmkit sample draws them) "
        "and compares them with a dataset's statistics. Prints a table and adds the results to "
        "MODEL/eval_results.json.",
        epilog="example: ddpmkit evaluate --model pretrained/mnist --dataset data/mnist --num_samples 1000",
    )
    add_model(parser)
    parser.add_argument(
        "--dataset", required=True, help="folder with train.parquet and test.parquet (e.g. ../shared/data/mnist)"
    )
    parser.add_argument("--num_samples", type=positive_int, default=1000,
                        help="images to generate (and real images for the floor) (default: %(default)s)")
    add_sampling(parser, choices=SCHEDULERS)
    parser.set_defaults(seed=0)
    parser.add_argument("--batch_size", type=positive_int, default=100, help="images per pipeline call")
    parser.add_argument("--guidance_scale", type=float, default=None, metavar="S",
                        help="the classifier-free guidance of a class-conditional model, whose samples ask for "
                        "every class equally often and are scored with the asked-for-class accuracy (default: "
                        f"{DEFAULT_GUIDANCE}; 1: none; 0: the unconditional model, its null class)")  # fmt: skip
    parser.add_argument("--classifier", default="auto",
                        help="classifier folder; 'auto' uses the one ddpmkit ships for the dataset, 'none' skips")
    parser.add_argument("--fid", choices=("auto", "yes", "no"), default="auto",
                        help="'auto' computes FID when the Inception weights are found")
    parser.add_argument("--inception_weights", default=None,
                        help="path of pt_inception-2015-12-05-6726825d.pth (default: torch hub's cache)")
    parser.add_argument("--reference_samples", type=positive_int, default=None,
                        help="compare with N images of the train split only, drawn at random (FID on a CPU)")
    parser.add_argument("--cache_dir", default=None, help="dataset statistics cache (default ~/.cache/ddpmkit/stats)")
    parser.add_argument("--output", default=None, help="JSON file to update (default MODEL/eval_results.json)")
    add_runtime(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_pipeline, format_table
    from ..evaluation.dataset import split_file

    if args.num_samples < 2:
        raise UsageError(f"--num_samples must be at least 2 to fit a covariance, got {args.num_samples}")
    steps = args.steps or SAMPLERS.get(args.scheduler, 1000)
    check_model_folder(args.model)
    try:
        split_file(args.dataset, "train")
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    classifier = None if args.classifier == "none" else args.classifier
    if classifier not in (None, "auto") and not Path(classifier).is_dir():
        raise UsageError(
            f"--classifier {classifier} is not a folder; pass a folder written by train-classifier, 'auto' or 'none'"
        )
    output = Path(args.output) if args.output else Path(args.model) / "eval_results.json"
    check_output_dir(output.parent, label=f"the folder of {output}")  # before minutes of sampling
    if output.exists() and (output.is_dir() or not _writable(output)):
        raise UsageError(f"cannot write {output}; choose another --output")
    if args.guidance_scale is not None and not 0 <= args.guidance_scale <= 100:
        raise UsageError(f"--guidance_scale must be between 0 and 100 (1: no guidance), got {args.guidance_scale}")
    pipe = load_pipeline(args)
    if args.guidance_scale is not None and pipe.id2label is None:
        raise UsageError(f"--guidance_scale: {args.model} is not class-conditional (its UNet has no id2label)")
    check_steps(pipe, steps)
    check_allocation(pipe, args.batch_size, f"--batch_size {args.batch_size}")
    try:
        results = evaluate_pipeline(
            pipe, args.dataset, num_samples=args.num_samples, num_inference_steps=steps, scheduler=args.scheduler,
            seed=args.seed, batch_size=args.batch_size, classifier=classifier,
            fid={"auto": None, "yes": True, "no": False}[args.fid], inception_weights=args.inception_weights,
            reference_samples=args.reference_samples, cache_dir=args.cache_dir, progress=not args.quiet,
            guidance_scale=args.guidance_scale,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None
    results["dataset"] = str(args.dataset)
    results["device"] = describe_device(pipe.device)
    for key in ("fid_skipped", "classifier_skipped"):
        if key in results:
            print(f"note: {results[key]}", file=sys.stderr)
    print(f"{args.scheduler}, {steps} steps, seed {args.seed}, {args.num_samples} samples "
          f"({results['sampling_seconds']:.0f} s sampling)")  # fmt: skip
    print(format_table(results))
    record = {}
    if output.is_file():
        try:
            record = json.loads(output.read_text())
        except (ValueError, RecursionError):
            record = {}
    key = f"{args.scheduler}-{steps}steps-n{args.num_samples}-seed{args.seed}"
    if "guidance_scale" in results:
        key += f"-guidance{results['guidance_scale']:g}"
    record[key] = results
    from ..utils.io import atomic_write_json

    try:
        atomic_write_json(output, record)
    except OSError as e:
        raise UsageError(f"could not write {output}: {one_line(e)}") from None
    print(f"wrote {output} [{key}]")
    if output.parent.resolve() == Path(args.model).resolve():
        print(f"the model card shows it after `ddpmkit card --model {args.model}`")
    return 0


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)

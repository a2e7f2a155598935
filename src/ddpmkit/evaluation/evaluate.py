"""Scoring a pipeline: generate samples, then classifier FD, confidence, class coverage and FID, each beside the
real-data floor (the same metric for as many held-out real images)."""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..pipelines.samplers import SAMPLERS, make_scheduler
from .classifier import ImageClassifier, bundled_classifier_path, prediction_summary
from .dataset import load_labelled_images, random_subset, split_file
from .features import ClassifierFeatures, InceptionFeatures, dataset_statistics
from .frechet import FeatureStatistics, statistics_distance
from .inception import find_inception_weights

SCHEDULERS = ("pipeline", *SAMPLERS)


def with_scheduler(pipe, scheduler: str):
    """``pipe`` with its scheduler replaced by the one named, built from the same config (the input is unchanged).

    Args:
        scheduler: ``"pipeline"`` (keep it), ``"ddpm"``, ``"ddim"`` or ``"dpmsolver"`` (DPM-Solver++).
    """
    if scheduler == "pipeline":
        return pipe
    if scheduler not in SAMPLERS:
        raise ValueError(f"scheduler {scheduler!r} must be one of {SCHEDULERS}")
    new = make_scheduler(pipe.scheduler, scheduler)
    if new is pipe.scheduler:
        return pipe
    swapped = type(pipe)(unet=pipe.unet, scheduler=new)
    swapped.set_progress_bar_config(disable=True)
    return swapped


@torch.no_grad()
def generate_images(
    pipe, num_samples: int, num_inference_steps: int, seed: int = 0, batch_size: int = 100
) -> torch.Tensor:
    """``num_samples`` images from ``pipe`` as uint8 ``(N, C, H, W)``, quantized as a saved PNG would be.

    Image ``i`` has its own generator seeded ``seed + i``, as in ``ddpmkit sample``, so the images scored are the
    ones that command draws for the same seed, whatever the batch size."""
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    batches = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(size)]
        images = pipe(
            batch_size=size, generator=generators, num_inference_steps=num_inference_steps, output_type="pt"
        ).images
        images = torch.as_tensor(images)
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # pipelines that return (B, H, W, C) arrays
        batches.append((images.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8))  # (B, C, H, W)
    return torch.cat(batches)


def _resolve_classifier(classifier, dataset) -> ClassifierFeatures | None:
    if classifier is None:
        return None
    if isinstance(classifier, ClassifierFeatures):
        return classifier
    if isinstance(classifier, ImageClassifier):
        return ClassifierFeatures(classifier)
    if classifier == "auto":
        name = Path(dataset).name if Path(dataset).is_dir() else Path(dataset).parent.name
        path = bundled_classifier_path(name)
        return None if path is None else ClassifierFeatures.from_folder(path)
    return ClassifierFeatures.from_folder(classifier)


def _classifier_metrics(extractor: ClassifierFeatures, images, reference: FeatureStatistics, suffix: str) -> dict:
    features, probabilities = extractor.classify(images)
    summary = prediction_summary(probabilities)
    return {
        f"classifier_fd{suffix}": statistics_distance(FeatureStatistics.from_features(features), reference),
        f"confidence{suffix}": summary["confidence"],
        f"class_entropy{suffix}": summary["class_entropy"],
        f"class_histogram{suffix}": summary["class_histogram"],
    }


def evaluate_images(
    images: torch.Tensor | np.ndarray,
    dataset: str | os.PathLike,
    classifier: "str | os.PathLike | ImageClassifier | ClassifierFeatures | None" = "auto",
    fid: bool | None = None,
    inception_weights: str | os.PathLike | None = None,
    reference_split: str = "train",
    reference_samples: int | None = None,
    floor_split: str | None = "test",
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Scores uint8 ``(N, C, H, W)`` images against a dataset's statistics.

    Args:
        images: the generated images, at the resolution the dataset is resized to.
        dataset: a folder of ``{split}.parquet`` files (e.g. ``../shared/data/mnist``).
        classifier: ``"auto"`` (the classifier committed with ddpmkit for this dataset's folder name, if any), a
            classifier folder, an :class:`ImageClassifier`, or ``None`` to skip the classifier metrics.
        fid: ``True`` computes FID (and fails without the Inception weights), ``False`` skips it, ``None`` computes
            it when the weights are found and otherwise puts the one-line reason under ``"fid_skipped"``.
        inception_weights: path of ``pt_inception-2015-12-05-6726825d.pth``; by default torch hub's cache.
        reference_split: the split whose statistics the samples are compared with.
        reference_samples: use only this many images of ``reference_split``, drawn at random (FID on a CPU).
        floor_split: held-out split for the real-data floor, measured with as many of its images as ``images``
            holds, drawn at random (seed 0; :func:`~ddpmkit.evaluation.dataset.random_subset`);
            ``None`` skips it.
        cache_dir: where dataset statistics are cached (see :func:`dataset_statistics`).
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"images must be uint8 (N >= 2, C, H, W), got {images.dtype} {tuple(images.shape)}")
    resolution, channels, n = images.shape[-1], images.shape[1], images.shape[0]
    split_file(dataset, reference_split)  # fail early, with the fix, on a wrong dataset path
    results: dict = {"num_samples": n, "resolution": resolution}
    extractor = _resolve_classifier(classifier, dataset)
    inception = None
    if fid is not False:
        try:
            find_inception_weights(inception_weights)
        except FileNotFoundError as e:
            if fid:
                raise
            results["fid_skipped"] = str(e)
        else:
            inception = InceptionFeatures(inception_weights)
    if extractor is None:
        results["classifier_skipped"] = (
            f"no classifier for {dataset}; train one with `python -m ddpmkit.evaluation train-classifier "
            f"--dataset {dataset} --output DIR` and pass classifier=DIR (--classifier DIR)"
        )
    floor_images = None
    if floor_split is not None:
        # a seeded random draw: held-out splits may be sorted by class, so their first n images are no sample
        floor_images = random_subset(load_labelled_images(dataset, floor_split, resolution, channels=channels), n)
        results["floor_split"] = floor_split
        results["floor_num_samples"] = len(floor_images.images)
    subset_seed = None if reference_samples is None else 0  # a random subset, not the first (maybe one-class) ones
    stats_args = dict(channels=channels, max_samples=reference_samples, cache_dir=cache_dir, subset_seed=subset_seed)
    if extractor is not None:
        start = time.time()
        reference = dataset_statistics(dataset, reference_split, resolution, extractor, **stats_args)
        results["classifier"] = extractor.name
        results["reference"] = f"{reference_split} ({reference.num_samples} images)"
        results.update(_classifier_metrics(extractor, images, reference, ""))
        if floor_images is not None:
            results.update(_classifier_metrics(extractor, floor_images.images, reference, "_floor"))
        results["class_entropy_max"] = math.log(len(results["class_histogram"]))
        results["classifier_seconds"] = round(time.time() - start, 2)
    if inception is not None:
        start = time.time()
        reference = dataset_statistics(dataset, reference_split, resolution, inception, **stats_args)
        results["fid_reference"] = f"{reference_split} ({reference.num_samples} images)"
        results["fid"] = statistics_distance(FeatureStatistics.from_features(inception(images)), reference)
        if floor_images is not None:
            floor = dataset_statistics(
                dataset,
                floor_split,
                resolution,
                inception,
                channels=channels,
                max_samples=n,
                cache_dir=cache_dir,
                images=floor_images,
                subset_seed=0,
            )
            results["fid_floor"] = statistics_distance(floor, reference)
        results["fid_seconds"] = round(time.time() - start, 2)
    return results


def evaluate_pipeline(
    pipe,
    dataset: str | os.PathLike,
    num_samples: int = 1000,
    num_inference_steps: int = 50,
    scheduler: str = "ddim",
    seed: int = 0,
    batch_size: int = 100,
    return_images: bool = False,
    **kwargs,
) -> "dict | tuple[dict, torch.Tensor]":
    """Generates ``num_samples`` images and scores them with :func:`evaluate_images`.

    Args:
        pipe: a :class:`~ddpmkit.DDPMPipeline` (or any pipeline taking ``output_type="pt"``).
        dataset: a folder of ``{split}.parquet`` files whose statistics the samples are compared with.
        num_samples: images to generate; the real-data floor uses as many held-out images.
        num_inference_steps: denoising steps.
        scheduler: ``"ddim"``, ``"dpmsolver"``, ``"ddpm"`` or ``"pipeline"`` (the pipeline's own), built from the
            pipeline's scheduler config.
        seed: seeds the sampling noise.
        batch_size: images per pipeline call.
        return_images: also return the scored uint8 ``(N, C, H, W)`` images, as ``(results, images)``.
        kwargs: passed to :func:`evaluate_images` (``classifier``, ``fid``, ``inception_weights``, ...).

    Example:

    >>> results = evaluate_pipeline(pipe, "../shared/data/mnist", num_samples=1000)  # doctest: +SKIP
    >>> results["classifier_fd"], results["classifier_fd_floor"]  # doctest: +SKIP
    """
    sampler = with_scheduler(pipe, scheduler)
    start = time.time()
    images = generate_images(sampler, num_samples, num_inference_steps, seed, batch_size)
    sampling_seconds = time.time() - start
    results = {
        "scheduler": scheduler if scheduler != "pipeline" else type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
        "sampling_seconds": round(sampling_seconds, 2),
    }
    results.update(evaluate_images(images, dataset, **kwargs))
    return (results, images) if return_images else results


TABLE_ROWS = (
    ("classifier FD", "classifier_fd"),
    ("confidence", "confidence"),
    ("class entropy", "class_entropy"),
    ("FID", "fid"),
)


def format_table(results: dict) -> str:
    """The metrics as a Markdown table: generated samples beside the real-data floor."""
    n, floor_n = results.get("num_samples"), results.get("floor_num_samples")
    lines = [f"| metric | generated (N={n}) | real-data floor (N={floor_n}) |", "|---|---|---|"]
    for label, key in TABLE_ROWS:
        if key not in results:
            continue
        floor = results.get(f"{key}_floor")
        if key == "class_entropy":
            label = f"class entropy (max {results['class_entropy_max']:.3f})"
        lines.append(f"| {label} | {results[key]:.4g} | {'-' if floor is None else f'{floor:.4g}'} |")
    return "\n".join(lines)


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``evaluate``: scores a saved pipeline and writes ``eval_results.json`` next to it."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a saved pipeline: classifier FD, confidence, class coverage and FID beside the real-data floor",
        description="Generates samples from a saved pipeline and compares them with a dataset's statistics. "
        "Prints a table and adds the results to MODEL/eval_results.json.",
    )
    parser.add_argument("--model", required=True, help="pipeline folder written by save_pretrained")
    parser.add_argument(
        "--dataset", required=True, help="folder with train.parquet and test.parquet (e.g. ../shared/data/mnist)"
    )
    parser.add_argument(
        "--num_samples", type=int, default=1000, help="images to generate (and real images for the floor)"
    )
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="ddim",
        help="sampler, built from the pipeline's scheduler config; 'pipeline' keeps the saved one",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--batch_size", type=int, default=100, help="images per pipeline call")
    parser.add_argument(
        "--classifier",
        default="auto",
        help="classifier folder; 'auto' uses the one committed for the dataset (mnist), 'none' skips",
    )
    parser.add_argument(
        "--fid",
        choices=("auto", "yes", "no"),
        default="auto",
        help="'auto' computes FID when the Inception weights are found",
    )
    parser.add_argument(
        "--inception_weights",
        default=None,
        help="path of pt_inception-2015-12-05-6726825d.pth (default: torch hub's cache)",
    )
    parser.add_argument(
        "--reference_samples",
        type=int,
        default=None,
        help="compare with N images of the train split only, drawn at random (FID on a CPU)",
    )
    parser.add_argument("--cache_dir", default=None, help="dataset statistics cache (default ~/.cache/ddpmkit/stats)")
    parser.add_argument("--device", default=None, help="where the pipeline runs (default: cuda if any, else cpu)")
    parser.add_argument("--output", default=None, help="JSON file to update (default MODEL/eval_results.json)")
    parser.set_defaults(func=evaluate_command)
    return parser


def evaluate_command(args: argparse.Namespace) -> int:
    """Runs ``evaluate``; bad input is one line on stderr and exit code 2."""
    prog = "ddpmkit evaluate"
    try:
        return _evaluate(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    import datasets
    from diffusers.utils import logging as diffusers_logging

    from ..pipelines import DDPMPipeline

    diffusers_logging.disable_progress_bar()  # the table is the output; no loading bars on stderr
    datasets.disable_progress_bars()  # nor the Parquet reader's, on a split's first read

    for name in ("num_samples", "steps", "batch_size", "reference_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if args.num_samples < 2:
        raise ValueError(f"--num_samples must be at least 2 to fit a covariance, got {args.num_samples}")
    model = Path(args.model)
    if not (model / "model_index.json").is_file():
        raise ValueError(f"--model {args.model} is not a pipeline folder (no model_index.json)")
    split_file(args.dataset, "train")
    classifier = None if args.classifier == "none" else args.classifier
    if classifier not in (None, "auto") and not Path(classifier).is_dir():
        raise ValueError(
            f"--classifier {classifier} is not a folder; pass a folder written by train-classifier, 'auto' or 'none'"
        )
    from ..cli import UsageError, _resolve_device

    try:
        device = _resolve_device(args.device)  # the checks and messages of the other commands' --device
    except UsageError as e:
        raise ValueError(str(e)) from None
    pipe = DDPMPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    fid = {"auto": None, "yes": True, "no": False}[args.fid]
    results = evaluate_pipeline(
        pipe,
        args.dataset,
        num_samples=args.num_samples,
        num_inference_steps=args.steps,
        scheduler=args.scheduler,
        seed=args.seed,
        batch_size=args.batch_size,
        classifier=classifier,
        fid=fid,
        inception_weights=args.inception_weights,
        reference_samples=args.reference_samples,
        cache_dir=args.cache_dir,
    )
    results["dataset"] = str(args.dataset)
    results["device"] = str(pipe.device)
    for key in ("fid_skipped", "classifier_skipped"):
        if key in results:
            print(f"note: {results[key]}", file=sys.stderr)
    print(
        f"{args.scheduler}, {args.steps} steps, seed {args.seed}, {args.num_samples} samples "
        f"({results['sampling_seconds']:.0f} s sampling)"
    )
    print(format_table(results))
    output = Path(args.output) if args.output else model / "eval_results.json"
    record = {}
    if output.is_file():
        try:
            record = json.loads(output.read_text())
        except json.JSONDecodeError:
            record = {}
    key = f"{args.scheduler}-{args.steps}steps-n{args.num_samples}-seed{args.seed}"
    record[key] = results
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output} [{key}]")
    return 0

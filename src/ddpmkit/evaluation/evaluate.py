"""Scoring a pipeline: generate samples, then classifier FD, confidence, class coverage and FID, each beside the
real-data floor (the same metric for as many held-out real images)."""

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..pipelines import DEFAULT_GUIDANCE
from ..pipelines.sampling import SAMPLERS, balanced_labels, sample_images, to_uint8, with_sampler
from .classifier import ImageClassifier, bundled_classifier_path, prediction_summary
from .dataset import load_labelled_images, random_subset, split_file
from .features import ClassifierFeatures, InceptionFeatures, dataset_statistics
from .frechet import FeatureStatistics, statistics_distance
from .inception import find_inception_weights

SCHEDULERS = ("pipeline", *SAMPLERS)


@torch.no_grad()
def generate_images(
    pipe, num_samples: int, num_inference_steps: int, seed: int = 0, batch_size: int = 100, progress: bool = False,
    **call_kwargs,
) -> torch.Tensor:  # fmt: skip
    """``num_samples`` images from ``pipe`` as uint8 ``(N, C, H, W)``, quantized as a saved PNG would be; image ``i``
    is the one ``ddpmkit sample`` draws for seed ``seed + i`` (:func:`~ddpmkit.pipelines.sampling.sample_batches`).
    ``call_kwargs`` (``class_labels``, ``guidance_scale``) go to :func:`~ddpmkit.pipelines.sampling.sample_images`."""
    return to_uint8(sample_images(pipe, num_samples, num_inference_steps, seed, batch_size, progress, **call_kwargs))


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


def _classifier_metrics(extractor: ClassifierFeatures, images, reference: FeatureStatistics, suffix: str,
                        requested: torch.Tensor | None = None) -> dict:  # fmt: skip
    features, probabilities = extractor.classify(images)
    summary = prediction_summary(probabilities)
    metrics = {
        f"classifier_fd{suffix}": statistics_distance(FeatureStatistics.from_features(features), reference),
        f"confidence{suffix}": summary["confidence"],
        f"class_entropy{suffix}": summary["class_entropy"],
        f"class_histogram{suffix}": summary["class_histogram"],
    }
    if requested is not None:  # how often the classifier sees the class that was asked for
        hit = (probabilities.argmax(dim=1) == requested).double()
        per_class = [float(hit[requested == c].mean()) if (requested == c).any() else None
                     for c in range(probabilities.shape[1])]  # fmt: skip
        metrics[f"class_accuracy{suffix}"] = float(hit.mean())
        metrics[f"class_accuracy_per_class{suffix}"] = [None if a is None else round(a, 4) for a in per_class]
    return metrics


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
    class_labels: "torch.Tensor | list[int] | None" = None,
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
        class_labels: the class each image was asked to show (of a class-conditional model): adds
            ``class_accuracy``, how often the classifier agrees, overall and per class. The floor's counterpart is
            the classifier's accuracy on the held-out images' true labels.
    """
    images = torch.as_tensor(images)
    requested = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if requested is not None and requested.shape[0] != images.shape[0]:
        raise ValueError(f"got {requested.shape[0]} class labels for {images.shape[0]} images")
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
            f"no classifier for {dataset}; train one with `ddpmkit train-classifier "
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
        results.update(_classifier_metrics(extractor, images, reference, "", requested))
        if floor_images is not None:
            truth = floor_images.labels if requested is not None else None
            results.update(_classifier_metrics(extractor, floor_images.images, reference, "_floor", truth))
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
    progress: bool = False,
    guidance_scale: float | None = None,
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
        progress: a progress bar over the images.
        guidance_scale: for a class-conditional pipeline (one with ``id2label``), whose images ask for every class
            equally often (image ``i`` class ``i % K``) and whose results add the asked-for-class accuracy: the
            classifier-free guidance (default ``DEFAULT_GUIDANCE``; 0: the unconditional model, its null class).
        kwargs: passed to :func:`evaluate_images` (``classifier``, ``fid``, ``inception_weights``, ...).

    Example:

    >>> results = evaluate_pipeline(pipe, "../shared/data/mnist", num_samples=1000)  # doctest: +SKIP
    >>> results["classifier_fd"], results["classifier_fd_floor"]  # doctest: +SKIP
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r} must be one of {SCHEDULERS}")
    sampler = with_sampler(pipe, scheduler)
    conditional = {}
    names = getattr(pipe, "id2label", None)
    if guidance_scale is not None and not names:
        raise ValueError("guidance_scale needs a class-conditional pipeline (a UNet with id2label)")
    if names:
        scale = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
        conditional = {"class_labels": balanced_labels(len(names), num_samples), "guidance_scale": scale}
    start = time.time()
    images = generate_images(sampler, num_samples, num_inference_steps, seed, batch_size, progress, **conditional)
    sampling_seconds = time.time() - start
    results = {
        "scheduler": scheduler if scheduler != "pipeline" else type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
        "sampling_seconds": round(sampling_seconds, 2),
    }
    if conditional:
        results["guidance_scale"] = conditional["guidance_scale"]
    results.update(evaluate_images(images, dataset, class_labels=conditional.get("class_labels"), **kwargs))
    return (results, images) if return_images else results


TABLE_ROWS = (
    ("classifier FD", "classifier_fd"),
    ("confidence", "confidence"),
    ("class entropy", "class_entropy"),
    ("asked-for-class accuracy", "class_accuracy"),
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

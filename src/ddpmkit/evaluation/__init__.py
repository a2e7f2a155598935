"""Sample-quality metrics: classifier Fréchet distance (offline), FID, confidence and class coverage.

>>> from ddpmkit.evaluation import evaluate_pipeline  # doctest: +SKIP
>>> evaluate_pipeline(pipe, "../shared/data/mnist", num_samples=1000)["classifier_fd"]  # doctest: +SKIP
"""

from .classifier import (
    ClassifierOutput,
    ImageClassifier,
    accuracy,
    bundled_classifier_path,
    classify,
    load_classifier,
    prediction_summary,
    train_classifier,
)
from .dataset import LabelledImages, load_labelled_images, random_subset
from .evaluate import (
    SCHEDULERS,
    evaluate_images,
    evaluate_pipeline,
    format_table,
    generate_images,
)
from .features import ClassifierFeatures, InceptionFeatures, dataset_statistics, default_cache_dir
from .frechet import FeatureStatistics, frechet_distance, statistics_distance
from .inception import FIDInceptionV3, find_inception_weights

__all__ = [
    "SCHEDULERS",
    "ClassifierFeatures",
    "ClassifierOutput",
    "FIDInceptionV3",
    "FeatureStatistics",
    "ImageClassifier",
    "InceptionFeatures",
    "LabelledImages",
    "accuracy",
    "bundled_classifier_path",
    "classify",
    "dataset_statistics",
    "default_cache_dir",
    "evaluate_images",
    "evaluate_pipeline",
    "find_inception_weights",
    "format_table",
    "frechet_distance",
    "generate_images",
    "load_classifier",
    "load_labelled_images",
    "prediction_summary",
    "random_subset",
    "statistics_distance",
    "train_classifier",
]

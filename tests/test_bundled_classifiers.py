"""The classifiers ddpmkit ships, so that ``ddpmkit evaluate`` and ``--eval_steps`` score offline."""

import json

import pytest
import torch

from ddpmkit.evaluation import bundled_classifier_path, load_classifier

SHIPPED = {"mnist": (1, 0.98), "fashion_mnist": (1, 0.90), "cifar10": (3, 0.70)}  # channels, least test accuracy


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_classifier_loads_and_records_its_accuracy(name):
    channels, least = SHIPPED[name]
    path = bundled_classifier_path(name)
    assert path is not None, name
    record = json.loads((path / "training.json").read_text())
    assert record["test_accuracy"] >= least and record["test_samples"] == 10_000
    assert record["command"].startswith("ddpmkit train-classifier") or "train-classifier" in record["command"]
    classifier = load_classifier(path).eval()
    with torch.no_grad():
        logits = classifier(torch.rand(2, channels, 32, 32) * 2 - 1).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_no_classifier_for_an_unknown_dataset():
    assert bundled_classifier_path("imagenet") is None

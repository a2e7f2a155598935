"""The Fréchet distance between two Gaussians fitted to features (Dowson & Landau 1982; FID, Heusel et al. 2017).

``d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``. The trace of the matrix square root is taken as the
sum of square roots of the eigenvalues of ``S_1^{1/2} S_2 S_1^{1/2}``, a symmetric positive semi-definite matrix
with the same eigenvalues as ``S_1 S_2``, so only symmetric eigen-decompositions in float64 are needed: no complex
parts to discard and no failures on singular covariances (fewer samples than feature dimensions).
"""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FeatureStatistics:
    """Mean and covariance of features, the Gaussian that the Fréchet distance compares.

    Args:
        mean: ``(D,)`` float64.
        cov: ``(D, D)`` float64, the unbiased sample covariance.
        num_samples: how many feature vectors they were computed from.
    """

    mean: np.ndarray
    cov: np.ndarray
    num_samples: int

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> "FeatureStatistics":
        """Fits the Gaussian to ``(N, D)`` features, ``N >= 2``."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must be (N, D) with N >= 2, got shape {features.shape}")
        return cls(
            features.mean(axis=0),
            np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1),
            features.shape[0],
        )


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; round-off negatives become 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """The squared Fréchet distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)`` (what FID reports).

    Args:
        mean1, mean2: ``(D,)`` means.
        cov1, cov2: ``(D, D)`` symmetric positive semi-definite covariances.
    """
    mean1, mean2 = np.asarray(mean1, dtype=np.float64), np.asarray(mean2, dtype=np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, dtype=np.float64)), np.atleast_2d(np.asarray(cov2, dtype=np.float64))
    dim = mean1.shape[0] if mean1.ndim == 1 else -1
    for name, value, shape in (("mean2", mean2, (dim,)), ("cov1", cov1, (dim, dim)), ("cov2", cov2, (dim, dim))):
        if mean1.ndim != 1 or value.shape != shape:
            raise ValueError(f"{name} has shape {value.shape}; expected {shape} to match mean1 of shape {mean1.shape}")
    # 1. |mu_1 - mu_2|^2
    diff = mean1 - mean2
    # 2. Tr((S_1 S_2)^{1/2}) = sum sqrt(eig(S_1^{1/2} S_2 S_1^{1/2}))
    sqrt_cov1 = _sqrt_psd(cov1)
    middle = sqrt_cov1 @ cov2 @ sqrt_cov1  # (D, D), symmetric PSD
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def statistics_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """:func:`frechet_distance` between two fitted Gaussians."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)

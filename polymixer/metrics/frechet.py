"""Fréchet distance between two Gaussians fitted to features (the FID formula), on any
feature network: this module only sees arrays of features, never a network.

    mu1, sigma1 = feature_statistics(features_of_generated)   # (N1, d) -> (d,), (d, d)
    mu2, sigma2 = feature_statistics(features_of_real)        # (N2, d)
    d2 = frechet_distance(mu1, sigma1, mu2, sigma2)

    d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

Features from Inception (the usual FID), from the bundled digit classifier
(:func:`polymixer.metrics.load_digit_classifier`), or from any other network plug in alike.
Values depend on the feature network and on the number of samples (the estimate is biased
upwards for small N): compare numbers computed with the same features and the same N only.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "trace_sqrt_product"]


def _as_float64(name: str, value, ndim: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    elif not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(value).__name__}")
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (float64) of ``features: (N, d)``, N >= 2
    (numpy array or torch tensor)."""
    x = _as_float64("features", features, 2)
    if x.shape[0] < 2:
        raise ValueError(f"features: need at least 2 rows (N, d) for a covariance, got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"features: need at least one feature column, got shape {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, (sigma + sigma.T) / 2


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; eigenvalues below zero (rounding) clipped."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((sigma1 sigma2)^(1/2))`` for symmetric PSD ``sigma1, sigma2: (d, d)``.

    Computed as ``sum(sqrt(eig(S)))`` with ``S = sigma1^(1/2) sigma2 sigma1^(1/2)``: S is
    similar to ``sigma1 sigma2`` (same eigenvalues) but symmetric PSD, so a symmetric
    eigen-decomposition (``numpy.linalg.eigh``) gives real eigenvalues and no complex
    round-off to discard, and a singular or near-singular covariance (fewer samples than
    features, dead features) needs no epsilon on the diagonal: its zero eigenvalues simply
    contribute zero. Eigenvalues that rounding makes slightly negative are clipped to 0.
    (The common alternative, ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` with an epsilon retry
    and dropping tiny imaginary parts, agrees to rounding on well-conditioned inputs; the
    tests compare the two.)
    """
    root1 = _psd_sqrt(sigma1)
    s = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((s + s.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1, mu2: means ``(d,)``; sigma1, sigma2: covariances ``(d, d)``, symmetric positive
            semi-definite (numpy arrays or torch tensors; computed in float64).
    Returns: ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` as a float >= 0
    (the number reported as FID when the features are Inception's). See
    :func:`trace_sqrt_product` for how the matrix square root is kept stable.
    """
    m1, m2 = _as_float64("mu1", mu1, 1), _as_float64("mu2", mu2, 1)
    s1, s2 = _as_float64("sigma1", sigma1, 2), _as_float64("sigma2", sigma2, 2)
    d = m1.shape[0]
    if m2.shape != (d,):
        raise ValueError(f"mu2: expected shape ({d},) like mu1, got {m2.shape}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name}: expected shape ({d}, {d}) to match the means, got {s.shape}")
        if not np.allclose(s, s.T, rtol=1e-6, atol=1e-8 * max(1.0, float(np.abs(s).max()))):
            raise ValueError(f"{name}: expected a symmetric covariance matrix")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    diff = m1 - m2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(value, 0.0)


def frechet_distance_from_features(features1, features2) -> float:
    """:func:`frechet_distance` of the statistics of ``features1: (N1, d)`` and ``features2: (N2, d)``."""
    mu1, s1 = feature_statistics(features1)
    mu2, s2 = feature_statistics(features2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"features2: expected {mu1.shape[0]} feature columns like features1, got {mu2.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2)

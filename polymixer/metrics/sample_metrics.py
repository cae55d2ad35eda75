"""Metrics of a batch of generated samples: conditional accuracy and the Fréchet distance,
on any feature / classifier functions (the bundled digit classifier by default in
:mod:`polymixer.evaluate`)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .frechet import feature_statistics, frechet_distance

__all__ = ["conditional_accuracy", "per_class_accuracy", "evaluate_samples"]


def _check_pair(samples: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"samples: expected a tensor (N, ...), got {type(samples).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels: expected an int64 tensor (N,), got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != samples.shape[0]:
        raise ValueError(f"labels: expected shape ({samples.shape[0]},) to match samples, got {tuple(labels.shape)}")
    if samples.shape[0] < 1:
        raise ValueError("samples: expected at least one sample, got 0")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    return labels.long().cpu()


def _predict(classify_fn: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor,
             batch_size: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            p = classify_fn(samples[i:i + batch_size])
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"classify_fn: expected it to return a tensor, got {type(p).__name__}")
            if p.dim() == 2:  # logits or probabilities
                p = p.argmax(1)
            if p.dim() != 1 or p.shape[0] != min(batch_size, len(samples) - i):
                raise ValueError(f"classify_fn: expected classes (n,) or logits (n, classes) for n = "
                                 f"{min(batch_size, len(samples) - i)} inputs, got shape {tuple(p.shape)}")
            out.append(p.long().cpu())
    return torch.cat(out)


def conditional_accuracy(samples: torch.Tensor, labels: torch.Tensor,
                         classify_fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 500) -> float:
    """The fraction of ``samples: (N, ...)`` that ``classify_fn`` assigns to the class they were
    generated for, ``labels: (N,)``. ``classify_fn`` maps a batch ``(n, ...)`` to classes
    ``(n,)`` or logits ``(n, classes)``."""
    labels = _check_pair(samples, labels)
    return float((_predict(classify_fn, samples, batch_size) == labels).float().mean())


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[float | None]:
    """Accuracy within each class ``0..n_classes-1`` (None for a class with no sample)."""
    out: list[float | None] = []
    for c in range(n_classes):
        mask = labels == c
        out.append(float((predicted[mask] == c).float().mean()) if mask.any() else None)
    return out


def _features(feature_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        parts = [feature_fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    for p in parts:
        if not isinstance(p, torch.Tensor) or p.dim() != 2:
            raise ValueError(f"feature_fn: expected it to return features (n, d), got "
                             f"{tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__}")
    return torch.cat(parts).double().cpu().numpy()


def evaluate_samples(
    samples: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor | tuple[np.ndarray, np.ndarray],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    classify_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_classes: int | None = None,
    batch_size: int = 500,
) -> dict:
    """Fréchet distance and conditional accuracy of generated ``samples: (N, ...)`` made for
    ``labels: (N,)``.

    Args:
        real: the real images ``(M, ...)`` (their features are computed with ``feature_fn``)
            or their statistics ``(mu (d,), sigma (d, d))`` from :func:`feature_statistics`.
        feature_fn: batch ``(n, ...)`` -> features ``(n, d)``; classify_fn: batch -> classes
            ``(n,)`` or logits ``(n, classes)``; None skips the accuracy.
        n_classes: for the per-class accuracies (default: ``labels.max() + 1``).
    Returns: ``{"num_samples", "frechet_distance", "conditional_accuracy",
    "per_class_accuracy"}`` (the accuracies None without ``classify_fn``). N >= 2 for the
    Fréchet distance.
    """
    labels = _check_pair(samples, labels)
    if samples.shape[0] < 2:
        raise ValueError(f"samples: the Fréchet distance needs at least 2 samples, got {samples.shape[0]}")
    if isinstance(real, torch.Tensor):
        mu_r, sigma_r = feature_statistics(_features(feature_fn, real, batch_size))
    elif isinstance(real, (tuple, list)) and len(real) == 2:
        mu_r, sigma_r = real
    else:
        raise TypeError(f"real: expected real images (tensor) or statistics (mu, sigma), got {type(real).__name__}")
    mu, sigma = feature_statistics(_features(feature_fn, samples, batch_size))
    out: dict = {"num_samples": int(samples.shape[0]),
                 "frechet_distance": frechet_distance(mu, sigma, mu_r, sigma_r),
                 "conditional_accuracy": None, "per_class_accuracy": None}
    if classify_fn is not None:
        predicted = _predict(classify_fn, samples, batch_size)
        out["conditional_accuracy"] = float((predicted == labels).float().mean())
        out["per_class_accuracy"] = per_class_accuracy(predicted, labels, n_classes or int(labels.max()) + 1)
    return out

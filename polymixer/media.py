"""Clips to and from files: GIF, MP4, ``.npy``, and PNG filmstrips, written atomically.

A clip is ``(F, C, H, W)`` float in the data range; several clips ``(B, F, C, H, W)`` are
tiled side by side in every frame of a GIF or MP4 (one row of B clips), and one row per
clip, one column per frame, in a filmstrip. ``.npy`` holds the raw float32 array, of
the shape given. GIF and PNG need pillow (a dependency); MP4 needs imageio with its
bundled ffmpeg (``pip install 'polymixer[video]'``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ._optional import require
from .images import make_grid, save_grid
from .io import atomic_write

__all__ = ["CLIP_SUFFIXES", "save_clip", "load_clip", "save_filmstrip", "UnreadableFileError"]

CLIP_SUFFIXES = (".gif", ".mp4", ".npy")


class UnreadableFileError(ValueError):
    """A file that cannot be decoded: ``path``, and ``reason`` (the decoder's error), which a
    caller that names the file itself can use without repeating it."""

    def __init__(self, path: str | Path, reason: str, what: str = "file"):
        self.path, self.reason = str(path), reason
        super().__init__(f"{what}: cannot read {self.path!r} ({reason})")


def _as_clips(clips: torch.Tensor) -> torch.Tensor:
    if not isinstance(clips, torch.Tensor) or clips.dim() not in (4, 5):
        shape = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
        raise ValueError(f"clips: expected (F, C, H, W) or (B, F, C, H, W), got {shape}")
    return clips.unsqueeze(0) if clips.dim() == 4 else clips


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in CLIP_SUFFIXES:
        raise ValueError(f"out: {str(path)!r} has no clip suffix; expected one of {CLIP_SUFFIXES}")
    return suffix


def _frames_uint8(clips: torch.Tensor, data_range, scale: int) -> np.ndarray:
    """``(F, H', W', C)`` uint8 frames with the B clips side by side, pixels enlarged ``scale`` times."""
    B, num_frames = clips.shape[:2]
    frames = []
    for f in range(num_frames):
        grid = make_grid(clips[:, f], nrow=B, padding=2 if B > 1 else 0, data_range=data_range)
        frames.append(grid.repeat(scale, axis=0).repeat(scale, axis=1))
    return np.stack(frames)


def save_clip(clips: torch.Tensor, path: str | Path, *, fps: float = 8.0, data_range=(-1.0, 1.0),
              scale: int | None = None) -> Path:
    """Write ``clips`` to ``path`` by its suffix (``.gif``, ``.mp4`` or ``.npy``), atomically.

    ``scale`` enlarges the pixels of GIF/MP4 frames (default: to about 128 pixels high).
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not fps > 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    if suffix == ".npy":
        arr = clips.detach().float().cpu().numpy()

        def write_npy(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)

        return atomic_write(path, write_npy)
    clips = _as_clips(clips)
    if clips.shape[2] not in (1, 3):
        raise ValueError(f"clips: GIF and MP4 need 1 or 3 channels, got {clips.shape[2]}")
    if scale is None:
        scale = max(1, 128 // clips.shape[-2])
    frames = _frames_uint8(clips, data_range, scale)
    if suffix == ".gif":
        Image = require("PIL.Image", None, "writing a GIF")
        ims = [Image.fromarray(f[:, :, 0] if f.shape[2] == 1 else f) for f in frames]
        duration = max(20, int(round(1000 / fps)))

        def write(tmp: str) -> None:
            ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=duration, loop=0)

        return atomic_write(path, write)
    imageio = require("imageio.v3", "video", "writing an MP4")
    require("imageio_ffmpeg", "video", "writing an MP4")
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.shape[3] == 1:
        frames = frames.repeat(3, axis=3)
    pad_h, pad_w = (-frames.shape[1]) % 16, (-frames.shape[2]) % 16  # codec-friendly sizes
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))

    # ffmpeg picks the container from the file name: write "<tmp>.mp4", then move it into place
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    try:
        imageio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_clip(path: str | Path, *, channels: int | None = None, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Read a clip ``(F, C, H, W)`` float32 from a ``.npy`` (as saved: raw values), or a GIF
    or MP4 (pixels mapped to ``data_range``; ``channels`` 1 or 3, default: grey stays 1).
    An unreadable file raises ValueError naming it."""
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"clip: file {str(path)!r} not found")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 4:
                raise ValueError(f"expected an (F, C, H, W) array, got shape {arr.shape}")
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if suffix == ".gif":
            Image = require("PIL.Image", None, "reading a GIF")
            with Image.open(path) as im:
                frames = []
                for i in range(getattr(im, "n_frames", 1)):
                    im.seek(i)
                    frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            arr = np.stack(frames)
        else:
            imageio = require("imageio.v3", "video", "reading an MP4")
            require("imageio_ffmpeg", "video", "reading an MP4")
            arr = np.asarray(imageio.imread(path, index=None, extension=".mp4"), dtype=np.uint8)
            if arr.ndim == 3:
                arr = arr[..., None]
    except (ImportError, FileNotFoundError):
        raise
    except Exception as exc:  # decoders raise many types
        detail = str(exc).replace(f" {str(path)!r}", "").replace(f" {str(path)}", "")  # the path is named once
        raise UnreadableFileError(path, f"{type(exc).__name__}: {detail}", "clip") from exc
    grey = arr.shape[3] == 1 or bool(np.all(arr[..., :1] == arr[..., 1:3]))
    c = channels or (1 if grey else 3)
    if c not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
    if c == 1:
        arr = arr[..., :1] if grey else np.round(arr[..., :3] @ np.array([0.299, 0.587, 0.114]))[..., None]
    elif arr.shape[3] == 1:
        arr = arr.repeat(3, axis=3)
    lo, hi = data_range
    x = torch.from_numpy(np.ascontiguousarray(arr[..., :c], dtype=np.float32)).permute(0, 3, 1, 2) / 255.0
    return x * (hi - lo) + lo


def save_filmstrip(clips: torch.Tensor, path: str | Path, *, data_range=(-1.0, 1.0), scale: int | None = None) -> Path:
    """A PNG with one row per clip and one column per frame."""
    clips = _as_clips(clips)
    B, frames = clips.shape[:2]
    if scale is None:
        scale = max(1, 64 // clips.shape[-1])
    return save_grid(clips.reshape(B * frames, *clips.shape[2:]), path, nrow=frames, data_range=data_range, scale=scale)

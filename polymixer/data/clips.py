"""A user's clips: ``root/<class name>/<clip files>`` (GIF, MP4 or ``.npy``), in memory.

Every clip is brought to ``frames`` frames (its first ones; shorter clips are an error, or
skipped on request), and every frame to ``image_size`` (short side resized, centre crop).
With a ``stride``, a clip gives every window of ``frames`` frames that starts at a multiple
of the stride instead of its first frames only: long clips train on all their length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..media import CLIP_SUFFIXES, load_clip
from .dataset import _InMemorySamples
from .folder import class_files, read_class_folder

__all__ = ["ClipDataset", "clip_folder", "has_clips", "probe_clip_folder"]


@dataclass
class ClipDataset(_InMemorySamples):
    """Clips ``(N, F, C, H, W)`` float32 in [-1, 1] and labels ``(N,)`` int64 in [0, n_classes);
    implements the training dataset protocol (:class:`~polymixer.data.TrainingData`)."""

    clips: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    name: str = "clips"
    class_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    _layout, _ndim = "(N, F, C, H, W)", 5

    def __post_init__(self) -> None:
        self._check("clips")

    @property
    def _samples(self) -> torch.Tensor:
        return self.clips


def has_clips(root: str | Path) -> bool:
    """True if a class folder of ``root`` holds a clip file (.gif, .mp4 or .npy)."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(f.suffix.lower() in CLIP_SUFFIXES for d in root.iterdir() if d.is_dir() for f in d.rglob("*"))


def probe_clip_folder(root: str | Path, limit: int = 8) -> tuple[int, int] | None:
    """What a folder's clips say of themselves, from up to ``limit`` of them spread over the
    classes: ``(channels, side)``, channels 1 when every one is grey and 3 otherwise, side the
    smallest short side of their frames. None when no clip can be read (loading then says why)."""
    files = class_files(root, CLIP_SUFFIXES)
    channels, side = 1, None
    for path in files[:: max(1, len(files) // limit)][:limit]:
        try:
            clip = load_clip(path)
        except (ValueError, OSError):  # an unreadable file is reported (or skipped) when the folder is loaded
            continue
        if clip.dim() != 4 or clip.shape[1] not in (1, 3):
            continue
        channels = max(channels, clip.shape[1])
        h, w = clip.shape[2:]
        side = min(h, w) if side is None else min(side, h, w)
    return None if side is None else (channels, int(side))


def _fit(clip: torch.Tensor, frames: int, image_size: int, channels: int, keep: int | None = -1) -> torch.Tensor:
    """The first ``keep`` frames (default ``frames``; None: all, at least ``frames``),
    ``channels`` channels, resized and centre-cropped."""
    if clip.shape[0] < frames:
        raise ValueError(f"has {clip.shape[0]} frames, fewer than the {frames} asked for")
    clip = clip[:frames if keep == -1 else keep]
    if clip.shape[1] != channels:
        if channels == 1:
            clip = clip.mean(dim=1, keepdim=True)
        elif clip.shape[1] == 1:
            clip = clip.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"has {clip.shape[1]} channels, not 1 or 3")
    h, w = clip.shape[2:]
    if (h, w) != (image_size, image_size):
        s = image_size / min(h, w)
        nh, nw = max(image_size, round(h * s)), max(image_size, round(w * s))
        clip = F.interpolate(clip, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - image_size) // 2, (nw - image_size) // 2
        clip = clip[:, :, top:top + image_size, left:left + image_size]
    return clip.clamp(-1, 1).contiguous()


def clip_folder(root: str | Path, image_size: int, frames: int, *, channels: int = 3, skip_bad_files: bool = False,
                progress: bool = True, stride: int | None = None) -> ClipDataset:
    """Load every clip under ``root/<class>/`` (classes in sorted order) into memory.

    ``.npy`` files hold ``(F, C, H, W)`` float arrays in [-1, 1]; GIF and MP4 pixels are
    mapped to [-1, 1]. ``skip_bad_files`` skips unreadable or too short clips (and reports
    how many) instead of stopping with an error naming the file. ``stride``: each clip of
    ``L >= frames`` frames gives the windows ``[s, s + frames)`` for ``s = 0, stride, 2 stride,
    ...`` up to ``L - frames`` (each a sample of the clip's class); None: its first ``frames``."""
    for name, value in (("image_size", image_size), ("frames", frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
        raise ValueError(f"stride: expected a positive int or None (the first frames only), got {stride!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
    keep = None if stride is not None else frames  # with a stride, every frame (then cut into windows)
    clips, labels, skipped, classes = read_class_folder(
        root, CLIP_SUFFIXES, lambda path: _fit(load_clip(path), frames, image_size, channels, keep=keep),
        what="clip", errors=(ValueError, OSError), skip_bad_files=skip_bad_files, progress=progress)
    if stride is not None:
        starts = [range(0, clip.shape[0] - frames + 1, stride) for clip in clips]
        labels = [label for label, s in zip(labels, starts) for _ in s]
        clips = [clip[i:i + frames] for clip, s in zip(clips, starts) for i in s]
    return ClipDataset(torch.stack(clips), torch.tensor(labels, dtype=torch.int64), n_classes=len(classes),
                       name=Path(root).name, class_names=classes, skipped=skipped)

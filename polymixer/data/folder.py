"""A user's images: ``root/<class name>/<image files>``, resized and centre-cropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._optional import require
from .dataset import ImageDataset

__all__ = ["image_folder", "IMAGE_EXTENSIONS", "load_image", "read_class_folder", "probe_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Decode ``path``, resize its short side to ``image_size`` and centre-crop: (C, S, S) uint8."""
    Image = require("PIL.Image", None, "data: reading image files")

    with Image.open(path) as im:
        im.load()
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def image_folder(
    root: str | Path,
    image_size: int,
    *,
    channels: int = 3,
    skip_bad_files: bool = False,
    progress: bool = True,
) -> ImageDataset:
    """Load every image under ``root/<class>/`` (classes in sorted order) into memory.

    Args:
        root: a folder with one subfolder per class.
        image_size: output side S; each image is resized (short side) and centre-cropped.
        channels: 1 (grey) or 3 (RGB).
        skip_bad_files: skip unreadable images (and report how many) instead of stopping
            with an error naming the file.
    Returns: an :class:`ImageDataset` with images ``(N, C, S, S)`` in [-1, 1]; the number
    of skipped files is in ``dataset.skipped`` (a list of paths).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
    require("PIL.Image", None, "data: reading image files")  # before the loop that turns errors into bad files
    images, labels, skipped, classes = read_class_folder(
        root, IMAGE_EXTENSIONS, lambda path: load_image(path, image_size, channels), what="image",
        errors=(Exception,),  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        skip_bad_files=skip_bad_files, progress=progress)
    x = torch.from_numpy(np.stack(images)).float().div_(127.5).sub_(1.0)
    return ImageDataset(x, torch.tensor(labels, dtype=torch.int64), n_classes=len(classes), name=Path(root).name,
                        class_names=classes, skipped=skipped)


def class_files(root: str | Path, extensions) -> list[Path]:
    """The files with one of ``extensions`` under ``root/<class>/`` (classes in sorted order);
    empty when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [f for d in classes for f in sorted(d.rglob("*")) if f.is_file() and f.suffix.lower() in extensions]


def probe_image_folder(root: str | Path, limit: int = 64) -> tuple[int, int] | None:
    """What a folder's images say of themselves, from up to ``limit`` of them spread over the
    classes: ``(channels, side)``, channels 1 when every one is grey (R = G = B) and 3 otherwise,
    side the smallest short side. None when no image can be read (loading then says why)."""
    Image = require("PIL.Image", None, "data: reading image files")
    files = class_files(root, IMAGE_EXTENSIONS)
    channels, side = 1, None
    for path in files[:: max(1, len(files) // limit)][:limit]:
        try:
            with Image.open(path) as im:
                w, h = im.size
                if channels == 1 and im.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    rgb = np.asarray(im.convert("RGB"))
                    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
                        channels = 3
        except Exception:  # an unreadable file is reported (or skipped) when the folder is loaded
            continue
        side = min(w, h) if side is None else min(side, w, h)
    return None if side is None else (channels, side)


def read_class_folder(root, extensions, read, *, what: str, errors: tuple, skip_bad_files: bool,
                      progress: bool = True) -> tuple[list, list[int], list[str], list[str]]:
    """Read every file with one of ``extensions`` under ``root/<class>/`` (classes in sorted
    order) with ``read(path)``; returns (items, labels, skipped paths, class names).

    An exception of ``errors`` (other than a missing optional dependency) stops with an error
    naming the file, or, with ``skip_bad_files``, skips it and reports how many were skipped.
    ``what`` names the files in messages ("image", "clip")."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data: folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"data: {str(root)!r} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"data: folder {str(root)!r} has no class subfolders (expected root/<class>/<{what}s>)")
    files = [(f, label) for label, name in enumerate(classes) for f in sorted((root / name).rglob("*"))
             if f.is_file() and f.suffix.lower() in extensions]
    if not files:
        raise ValueError(f"data: folder {str(root)!r} has no {what}s in its class subfolders (extensions {extensions})")
    items, labels, skipped = [], [], []
    for path, label in tqdm(files, desc=f"loading {root.name}", disable=not progress, leave=False):
        try:
            items.append(read(path))
        except ImportError:
            raise
        except errors as exc:
            if not skip_bad_files:
                reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"  # not the reader's own message
                raise ValueError(
                    f"data: cannot read {what} {str(path)!r} ({reason}); "
                    "pass skip_bad_files=True (--skip-bad-files) to skip unreadable files"
                ) from exc
            skipped.append(str(path))
            continue
        labels.append(label)
    if skipped:
        print(f"data: skipped {len(skipped)} unreadable {what} file(s) of {len(files)} in {root}")
    if not items:
        raise ValueError(f"data: no readable {what} in {str(root)!r} ({len(skipped)} unreadable)")
    return items, labels, skipped, classes

"""Datasets: bundled digits, moving digits (clips), a user's image or clip folder, and
optional VAE latents. Every one implements :class:`TrainingData`, what training reads."""

from .clips import ClipDataset, clip_folder, has_clips
from .dataset import ImageDataset, TrainingData, batch_indices
from .digits import mnist_digits, sklearn_digits
from .folder import image_folder
from .moving_digits import MovingDigits, moving_digits

__all__ = ["ImageDataset", "ClipDataset", "MovingDigits", "TrainingData", "batch_indices", "mnist_digits",
           "sklearn_digits", "moving_digits", "image_folder", "clip_folder", "load_dataset", "is_video_data", "VIDEO_DATA"]

# bundled clip sources: name -> digits per clip
VIDEO_DATA = {"moving-digits": 1, "moving-digits-2": 2}


def is_video_data(name: str) -> bool:
    """True for the bundled clip sources and for folders whose classes hold clip files."""
    return name in VIDEO_DATA or has_clips(name)


def load_dataset(name: str, image_size: int, *, channels: int = 3, skip_bad_files: bool = False,
                 frames: int = 8, seed: int = 0) -> TrainingData:
    """``"mnist"``, ``"digits"``, ``"moving-digits"`` (one digit per clip),
    ``"moving-digits-2"`` (two), or a folder path (one subfolder per class) of images or of
    clips (GIF / MP4 / .npy); ``frames`` is the clip length of video data."""
    if name in VIDEO_DATA:
        return moving_digits(image_size, frames, VIDEO_DATA[name], seed=seed)
    if has_clips(name):
        return clip_folder(name, image_size, frames, channels=channels, skip_bad_files=skip_bad_files)
    if name == "mnist":
        return mnist_digits(image_size, mode="pad" if image_size >= 28 else "resize")
    if name == "digits":
        return sklearn_digits(image_size)
    return image_folder(name, image_size, channels=channels, skip_bad_files=skip_bad_files)

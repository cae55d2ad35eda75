"""Datasets: bundled digits, a user's image folder, and optional VAE latents."""

from .dataset import ImageDataset, TrainingData, batch_indices
from .digits import mnist_digits, sklearn_digits
from .folder import image_folder

__all__ = ["ImageDataset", "TrainingData", "batch_indices", "mnist_digits", "sklearn_digits", "image_folder", "load_dataset"]


def load_dataset(name: str, image_size: int, *, channels: int = 3, skip_bad_files: bool = False) -> ImageDataset:
    """``"mnist"``, ``"digits"`` or a folder path (one subfolder per class)."""
    if name == "mnist":
        return mnist_digits(image_size, mode="pad" if image_size >= 28 else "resize")
    if name == "digits":
        return sklearn_digits(image_size)
    return image_folder(name, image_size, channels=channels, skip_bad_files=skip_bad_files)

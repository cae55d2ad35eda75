"""The dataset protocol of training, an in-memory labelled image dataset, and a
deterministic, resumable batch order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

__all__ = ["TrainingData", "ImageDataset", "batch_indices"]


@runtime_checkable
class TrainingData(Protocol):
    """What training needs from a dataset of labelled samples (images or clips).

    ``batch(indices)`` returns the samples ``(len(indices), *sample_shape)`` float32 in
    the data range and their labels ``(len(indices),)`` int64 in [0, n_classes). Samples
    may live in memory (the fast default) or be read or generated on demand.
    """

    name: str
    n_classes: int
    class_names: list[str] | None

    def __len__(self) -> int: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class _InMemorySamples:
    """What the in-memory datasets share: a samples tensor ``(N, *sample_shape)`` beside
    labels ``(N,)``, checked on construction, indexed and batched the same way. A subclass
    names its samples' layout (``_layout``, for messages) and their number of dimensions
    (``_ndim``)."""

    _layout: str
    _ndim: int

    @property
    def _samples(self) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, what: str) -> None:
        samples = self._samples
        if samples.dim() != self._ndim:
            raise ValueError(f"{what}: expected {self._layout}, got shape {tuple(samples.shape)}")
        if self.labels.shape != (samples.shape[0],):
            raise ValueError(f"labels: expected shape ({samples.shape[0]},), got {tuple(self.labels.shape)}")
        if len(self) == 0:
            raise ValueError(f"{self.name}: the dataset is empty")

    def __len__(self) -> int:
        return self._samples.shape[0]

    def __getitem__(self, index):
        return self._samples[index], self.labels[index]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``(len(indices), *sample_shape)`` and labels ``(len(indices),)``."""
        return self._samples[indices], self.labels[indices]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self._samples.shape[1:])


@dataclass
class ImageDataset(_InMemorySamples):
    """Images ``(N, C, H, W)`` float32 in the data range ([-1, 1] pixels, or scaled latents)
    and labels ``(N,)`` int64 in [0, n_classes)."""

    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    name: str = "images"
    class_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    _layout, _ndim = "(N, C, H, W)", 4

    def __post_init__(self) -> None:
        self._check("images")

    @property
    def _samples(self) -> torch.Tensor:
        return self.images

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Indices of the examples of training step ``step`` for process ``rank``.

    The order is a pure function of (seed, step): epochs are random permutations of the
    ``n`` examples seeded by ``seed`` and the epoch number, cut into global batches of
    ``batch_size * world_size`` (wrapping into the next epoch), and each process takes
    its own slice. So resuming at step s needs no loader state.
    """
    global_batch = batch_size * world_size
    start = step * global_batch + rank * batch_size
    out: list[torch.Tensor] = []
    count, pos = 0, start
    while count < batch_size:
        epoch, offset = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        take = min(batch_size - count, n - offset)
        out.append(perm[offset:offset + take])
        count += take
        pos += take
    return torch.cat(out)

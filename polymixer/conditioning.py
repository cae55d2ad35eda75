"""What a diffusion network is conditioned on, as one object that samplers pass along.

A condition owns its rows (one per sample), its *null* value (the "no condition" of
classifier-free guidance) and its checks, so samplers, video sampling and training never
look inside it. The protocol (:class:`Condition`):

``batch_size``
    the number of samples it conditions;
``null()``
    the unconditional counterpart, same rows;
``cat(other)``
    its rows followed by ``other``'s (guidance runs both in one batch);
``rows(index)``
    a subset of rows (a slice, or an index tensor), for batching;
``drop(mask)``
    the rows where ``mask`` (B,) is True replaced by the null value (label dropout in training);
``to(device)``.

:class:`ClassLabels` is the one kind today (class indices, the null label ``n_classes``).
A sequence of embeddings (text, audio, an earlier clip) is one more class of the same
protocol, read by a cross-mixing layer of the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Condition", "ClassLabels", "as_condition", "check_labels"]


@runtime_checkable
class Condition(Protocol):
    @property
    def batch_size(self) -> int: ...

    def null(self) -> "Condition": ...

    def cat(self, other: "Condition") -> "Condition": ...

    def rows(self, index) -> "Condition": ...

    def drop(self, mask: torch.Tensor) -> "Condition": ...

    def to(self, device) -> "Condition": ...


def check_labels(y, n_classes: int) -> None:
    """Raise for labels that are not integers in [0, n_classes] (n_classes is the null label)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y: expected a torch.Tensor of class labels, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"y: expected integer class labels, got dtype {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"y: expected a (B,) tensor of class labels, got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > n_classes):
        bad = y[(y < 0) | (y > n_classes)][0].item()
        raise ValueError(
            f"y: unknown class index {bad}; expected 0..{n_classes - 1} (or {n_classes}, the null label)"
        )


@dataclass(frozen=True)
class ClassLabels:
    """Class labels ``(B,)`` int64 in [0, n_classes]; ``n_classes`` is the null label."""

    labels: torch.Tensor
    n_classes: int

    def __post_init__(self) -> None:
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 1:
            raise ValueError(f"n_classes: expected a positive int, got {self.n_classes!r}")
        check_labels(self.labels, self.n_classes)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def null(self) -> "ClassLabels":
        return ClassLabels(torch.full_like(self.labels, self.n_classes), self.n_classes)

    def cat(self, other: "ClassLabels") -> "ClassLabels":
        if not isinstance(other, ClassLabels) or other.n_classes != self.n_classes:
            raise ValueError(f"other: expected ClassLabels of {self.n_classes} classes, got {other!r}")
        return ClassLabels(torch.cat([self.labels, other.labels]), self.n_classes)

    def rows(self, index) -> "ClassLabels":
        return ClassLabels(self.labels[index], self.n_classes)

    def drop(self, mask: torch.Tensor) -> "ClassLabels":
        return ClassLabels(torch.where(mask, torch.full_like(self.labels, self.n_classes), self.labels),
                           self.n_classes)

    def to(self, device) -> "ClassLabels":
        return ClassLabels(self.labels.to(device), self.n_classes)


def as_condition(y, n_classes: int) -> ClassLabels:
    """``y`` as :class:`ClassLabels` of ``n_classes`` classes: a tensor (or list) of labels
    is wrapped and checked; ClassLabels must have the same number of classes."""
    if isinstance(y, ClassLabels):
        if y.n_classes != n_classes:
            raise ValueError(f"y: labels of {y.n_classes} classes given to a model of {n_classes}")
        return y
    if isinstance(y, (list, tuple)):
        y = torch.as_tensor(y, dtype=torch.int64)
    return ClassLabels(y, n_classes)

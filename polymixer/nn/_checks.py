"""Input checks shared by the mixers: clear errors before any heavy work."""

from __future__ import annotations

import torch


def check_positive_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {bound}, got {value}")
    return value


def check_tokens(name: str, x, width: int, batch: int | None = None) -> torch.Tensor:
    """x must be a floating (B, N, width) tensor (with B = batch when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{name}: expected shape (B, N, D) with D={width}, got rank {x.dim()} shape {tuple(x.shape)}")
    if x.shape[-1] != width:
        raise ValueError(f"{name}: expected width D={width} in the last dimension, got {x.shape[-1]}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name}: expected batch size {batch} (that of x), got {x.shape[0]}")
    return x

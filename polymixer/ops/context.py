"""Context modes: argument checking, dispatch to the O(N) aggregations, dense masks.

A *context mode* says which context tokens ``C_i`` each query i reads (spec section 2).
The same keyword arguments are accepted by every mixer of the package
(:class:`polymixer.PolynomialMixer`, :class:`polymixer.MultiHeadAttention`):

``context_mask``  (B, N) bool, True where a context token is real (padding mask).
``causal``        query i reads tokens j <= i (with ``cu_seqlens``: inside its sequence).
``block_size``    block-causal with blocks (frames) of T tokens; the last may be shorter.
``block_lengths`` block-causal with explicit consecutive block lengths (sum = N).
``cu_seqlens``    packed sequences: (S + 1,) cumulative lengths, 0 first and N last.
``mask``          dense (B, M, N) or (M, N) bool: the general, O(M*N) form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import aggregation as agg
from .aggregation import _compiling

__all__ = ["ContextMode", "resolve_context", "aggregate", "dense_context_mask"]


@dataclass(frozen=True)
class ContextMode:
    """A validated context mode (see the module docstring)."""

    kind: str  # "full", "causal", "block", "packed", "dense"
    context_mask: torch.Tensor | None = None
    block_ids: torch.Tensor | None = None
    num_blocks: int = 0
    cu_seqlens: torch.Tensor | None = None
    causal: bool = False
    mask: torch.Tensor | None = None

    @property
    def shared_state(self) -> bool:
        """True when every query reads the same state (output rows of aggregate: 1)."""
        return self.kind == "full"


def _check_bool_like(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.bool and (t.dtype.is_floating_point or t.dtype.is_complex):
        raise TypeError(
            f"{name}: expected a bool (or integer 0/1) tensor with True = token is used, "
            f"got dtype {t.dtype}; additive float masks are not supported"
        )


def resolve_context(
    batch: int,
    num_queries: int,
    num_context: int,
    *,
    context_mask: torch.Tensor | None = None,
    causal: bool = False,
    block_size: int | None = None,
    block_lengths: Sequence[int] | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> ContextMode:
    """Validate the context-mode arguments and return a :class:`ContextMode`.

    batch, num_queries (M), num_context (N): the sizes of the call. Raises ValueError or
    TypeError naming the argument before any heavy work.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    chosen = [
        name
        for name, value in (
            ("block_size", block_size),
            ("block_lengths", block_lengths),
            ("cu_seqlens", cu_seqlens),
            ("mask", mask),
        )
        if value is not None
    ]
    if len(chosen) > 1:
        raise ValueError(f"give at most one of block_size, block_lengths, cu_seqlens, mask; got {chosen}")
    if causal and chosen and chosen[0] != "cu_seqlens":
        raise ValueError(f"causal=True cannot be combined with {chosen[0]}")
    needs_self = causal or (chosen and chosen[0] != "mask")
    if needs_self and num_queries != num_context:
        what = "causal" if causal else chosen[0]
        raise ValueError(
            f"{what}: needs as many queries as context tokens, got {num_queries} queries "
            f"and {num_context} context tokens"
        )

    if context_mask is not None:
        _check_bool_like("context_mask", context_mask)
        if context_mask.dim() != 2 or tuple(context_mask.shape) != (batch, num_context):
            raise ValueError(
                f"context_mask: expected shape (B, N) = ({batch}, {num_context}), "
                f"got {tuple(context_mask.shape)}"
            )
        if mask is not None:
            raise ValueError("context_mask cannot be combined with a dense mask; fold it into mask")
        context_mask = context_mask.bool()

    if mask is not None:
        _check_bool_like("mask", mask)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0).expand(batch, -1, -1)
        if mask.dim() != 3 or tuple(mask.shape) != (batch, num_queries, num_context):
            raise ValueError(
                f"mask: expected shape (B, M, N) = ({batch}, {num_queries}, {num_context}) "
                f"or (M, N), got {tuple(mask.shape)}"
            )
        return ContextMode("dense", mask=mask.bool())

    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int):
            raise TypeError(f"block_size: expected an int, got {type(block_size).__name__}")
        if block_size < 1:
            raise ValueError(f"block_size: expected >= 1, got {block_size}")
        ids = agg.block_ids_from_size(num_context, block_size, device=device)
        num_blocks = -(-num_context // block_size)
        return ContextMode("block", context_mask=context_mask, block_ids=ids, num_blocks=num_blocks)

    if block_lengths is not None:
        lengths = torch.as_tensor(block_lengths)
        if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"block_lengths: expected a 1-D sequence of ints, got {block_lengths!r}")
        if not _compiling():
            values = lengths.tolist()
            if any(v < 1 for v in values) or sum(values) != num_context:
                raise ValueError(
                    f"block_lengths: expected positive lengths summing to N={num_context}, "
                    f"got {values}"
                )
        ids = agg.block_ids_from_lengths(lengths, device=device)
        return ContextMode("block", context_mask=context_mask, block_ids=ids, num_blocks=lengths.numel())

    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            cu_seqlens = torch.as_tensor(cu_seqlens)
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
            raise TypeError(
                f"cu_seqlens: expected a 1-D integer tensor, got dtype {cu_seqlens.dtype} "
                f"and shape {tuple(cu_seqlens.shape)}"
            )
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens: expected at least 2 entries, got {cu_seqlens.numel()}")
        if not _compiling():
            values = cu_seqlens.tolist()
            if values[0] != 0 or values[-1] != num_context:
                raise ValueError(
                    f"cu_seqlens: expected to start at 0 and end at N={num_context}, got {values}"
                )
            if any(b < a for a, b in zip(values[:-1], values[1:])):
                raise ValueError(f"cu_seqlens: expected non-decreasing values, got {values}")
        return ContextMode(
            "packed", context_mask=context_mask, cu_seqlens=cu_seqlens.to(device=device, dtype=torch.long), causal=causal
        )

    if causal:
        return ContextMode("causal", context_mask=context_mask)
    if context_mask is not None:
        return ContextMode("full", context_mask=context_mask)
    return ContextMode("full")


def aggregate(h: torch.Tensor, mode: ContextMode, prefix=None) -> torch.Tensor:
    """The state each query reads: ``(B, 1, F)`` for the full mode, ``(B, M, F)`` otherwise.

    h: (B, N, F) context features; prefix: optional ``(total (B, F), count (B,))`` of
    tokens seen before, read by every query (full, causal and block modes only).
    Float32 (float64 for float64 input).
    """
    if prefix is not None and mode.kind not in ("full", "causal", "block"):
        raise ValueError(f"a streaming state cannot be combined with the {mode.kind} context mode")
    if prefix is None and h.is_cuda and mode.kind in ("full", "causal", "block") and not _compiling():
        from .triton import triton_aggregate, triton_available  # optional: Triton may be absent
        if triton_available(h) and h.dtype in (torch.float32, torch.bfloat16, torch.float16):
            return triton_aggregate(h, mode)
    if mode.kind == "full":
        return agg.mean_full(h, mode.context_mask, prefix)
    if mode.kind == "causal":
        return agg.mean_causal(h, mode.context_mask, prefix)
    if mode.kind == "block":
        return agg.mean_block_causal(h, mode.block_ids, mode.num_blocks, mode.context_mask, prefix)
    if mode.kind == "packed":
        return agg.mean_packed(h, mode.cu_seqlens, mode.causal, mode.context_mask)
    if mode.kind == "dense":
        return agg.mean_dense(h, mode.mask)
    raise ValueError(f"unknown context mode {mode.kind!r}")  # pragma: no cover


def dense_context_mask(mode: ContextMode, batch: int, num_queries: int, num_context: int, device=None) -> torch.Tensor:
    """The (B, M, N) bool mask ``M[b, i, j] = (j in C_i)`` of any mode, built from indices.

    O(M*N): used by the attention module and as the test oracle of the O(N) forms.
    """
    i = torch.arange(num_queries, device=device).view(-1, 1)
    j = torch.arange(num_context, device=device).view(1, -1)
    if mode.kind == "dense":
        return mode.mask.to(device)
    if mode.kind == "full":
        m = torch.ones(num_queries, num_context, dtype=torch.bool, device=device)
    elif mode.kind == "causal":
        m = j <= i
    elif mode.kind == "block":
        ids = mode.block_ids.to(device)
        m = ids.view(1, -1) <= ids.view(-1, 1)
    elif mode.kind == "packed":
        seg = agg.segment_ids_from_cu_seqlens(mode.cu_seqlens.to(device))
        m = seg.view(1, -1) == seg.view(-1, 1)
        if mode.causal:
            m = m & (j <= i)
    else:  # pragma: no cover
        raise ValueError(f"unknown context mode {mode.kind!r}")
    m = m.unsqueeze(0).expand(batch, -1, -1)
    if mode.context_mask is not None:
        m = m & mode.context_mask.to(device).unsqueeze(1)
    return m

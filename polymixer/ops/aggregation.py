"""Aggregation: the per-query mean of the context features, for every context mode.

All functions take the features ``h: (B, N, F)`` of the N context tokens and return the
state read by each query, in float32 (float64 if ``h`` is float64):

* ``(B, 1, F)`` when every query shares one state (full, padding mask),
* ``(B, M, F)`` otherwise (one row per query; M = N for the self-mixing modes).

Every mode but :func:`mean_dense` is O(N) in time and memory: no N x N tensor is built.
An empty context set gives a zero state, never NaN. Sums and counts are kept in the
accumulation dtype (float32, or float64 for float64 inputs).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "accumulation_dtype",
    "mean_full",
    "mean_causal",
    "mean_block_causal",
    "mean_packed",
    "mean_dense",
    "block_ids_from_size",
    "block_ids_from_lengths",
    "segment_ids_from_cu_seqlens",
]


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


@torch.library.custom_op("polymixer::cumsum", mutates_args=())
def _opaque_cumsum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.cumsum`` as an opaque operator for torch.compile (see :func:`_cumsum`)."""
    return torch.cumsum(t, dim)


@_opaque_cumsum.register_fake
def _(t, dim):
    return torch.empty_like(t)


def _opaque_cumsum_setup(ctx, inputs, output):
    ctx.dim = inputs[1]


def _opaque_cumsum_backward(ctx, grad):
    # the adjoint of a prefix sum is the reversed prefix sum
    return _opaque_cumsum(grad.flip(ctx.dim), ctx.dim).flip(ctx.dim), None


_opaque_cumsum.register_autograd(_opaque_cumsum_backward, setup_context=_opaque_cumsum_setup)


def _cumsum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Prefix sum along ``dim``. Inside torch.compile it is an opaque call of ATen's kernel:
    inductor's own scan codegen for CUDA (torch 2.11) fails on the scans fused with the
    feature computation here ("list indices must be integers or slices, not NoneType")."""
    return _opaque_cumsum(t, dim) if _compiling() else t.cumsum(dim)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _masked(h: torch.Tensor, context_mask: torch.Tensor | None):
    """Upcast h to the accumulation dtype and zero the masked tokens.

    Returns ``(h_acc, weights)`` where weights is ``(B, N)`` or None (all ones).
    """
    acc = accumulation_dtype(h.dtype)
    h = h.to(acc)
    if context_mask is None:
        return h, None
    w = context_mask.to(acc)
    return h * w.unsqueeze(-1), w


def _divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` with an empty set (count 0) giving 0."""
    return total / count.clamp_min(1).unsqueeze(-1)


def _add_prefix(total, count, prefix):
    """Add a running state ``prefix = (total (B, F), count (B,))`` of earlier tokens."""
    if prefix is None:
        return total, count
    p_total, p_count = prefix
    return total + p_total.to(total.dtype).unsqueeze(1), count + p_count.to(count.dtype).unsqueeze(1)


def mean_full(
    h: torch.Tensor, context_mask: torch.Tensor | None = None, prefix=None
) -> torch.Tensor:
    """Mean over all context tokens, or over those with ``context_mask[b, j]`` true.

    h: (B, N, F); context_mask: (B, N) bool or None; prefix: optional running state
    ``(total (B, F), count (B,))`` of tokens seen before (every query also reads them).
    Returns (B, 1, F).
    """
    hw, w = _masked(h, context_mask)
    total = hw.sum(dim=1, keepdim=True)
    if w is None:
        count = torch.full((h.shape[0], 1), float(h.shape[1]), dtype=hw.dtype, device=h.device)
    else:
        count = w.sum(dim=1, keepdim=True)
    total, count = _add_prefix(total, count, prefix)
    return _divide(total, count)


def mean_causal(
    h: torch.Tensor, context_mask: torch.Tensor | None = None, prefix=None
) -> torch.Tensor:
    """Token-causal mean: query i reads the mean of tokens j <= i. Prefix sums, O(N).

    h: (B, N, F); context_mask: (B, N) or None; prefix: as in :func:`mean_full`.
    Returns (B, N, F).
    """
    hw, w = _masked(h, context_mask)
    total = _cumsum(hw, 1)
    if w is None:
        count = torch.arange(1, h.shape[1] + 1, dtype=hw.dtype, device=h.device)
        count = count.unsqueeze(0).expand(h.shape[0], -1)
    else:
        count = _cumsum(w, 1)
    total, count = _add_prefix(total, count, prefix)
    return _divide(total, count)


def block_ids_from_size(num_tokens: int, block_size: int, device=None) -> torch.Tensor:
    """Block index of each token for blocks of ``block_size`` tokens (last may be shorter)."""
    # Truncating division (= floor for these non-negative values): inductor's CPU code for
    # ``arange // int`` (torch 2.13) leaves the vector tail unwritten (garbage ids).
    return torch.div(torch.arange(num_tokens, device=device), block_size, rounding_mode="trunc")


def block_ids_from_lengths(block_lengths: Sequence[int] | torch.Tensor, device=None) -> torch.Tensor:
    """Block index of each token for consecutive blocks of the given lengths."""
    lengths = torch.as_tensor(block_lengths, dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Sequence index of each token of a packed batch given cumulative lengths (S + 1,)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(
        torch.arange(lengths.numel(), device=cu_seqlens.device), lengths.long()
    )


def _segment_sums(values: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum ``values: (B, N, ...)`` over tokens sharing an id; returns (B, S, ...)."""
    out = values.new_zeros((values.shape[0], num_segments) + tuple(values.shape[2:]))
    return out.index_add(1, ids, values)


def mean_block_causal(
    h: torch.Tensor,
    block_ids: torch.Tensor,
    num_blocks: int,
    context_mask: torch.Tensor | None = None,
    prefix=None,
) -> torch.Tensor:
    """Block-causal mean: query i reads all tokens j with ``block(j) <= block(i)``.

    h: (B, N, F); block_ids: (N,) non-decreasing block index of each token (see
    :func:`block_ids_from_size`, :func:`block_ids_from_lengths`); num_blocks: the number
    of blocks; prefix: as in :func:`mean_full`. Per-block sums then a prefix over
    blocks: O(N). Returns (B, N, F).
    """
    hw, w = _masked(h, context_mask)
    block_total = _cumsum(_segment_sums(hw, block_ids, num_blocks), 1)
    if w is None:
        ones = torch.ones(h.shape[1], dtype=hw.dtype, device=h.device)
        block_count = _segment_sums(ones.unsqueeze(0), block_ids, num_blocks)
        block_count = block_count.expand(h.shape[0], -1)
    else:
        block_count = _segment_sums(w, block_ids, num_blocks)
    block_count = _cumsum(block_count, 1)
    block_total, block_count = _add_prefix(block_total, block_count, prefix)
    block_mean = _divide(block_total, block_count)
    return block_mean.index_select(1, block_ids)


def mean_packed(
    h: torch.Tensor,
    cu_seqlens: torch.Tensor,
    causal: bool = False,
    context_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean within each packed sequence (optionally causal inside it). O(N).

    h: (B, N, F) where the token axis holds S sequences back to back, sequence s being
    tokens ``cu_seqlens[s]:cu_seqlens[s+1]`` (the same packing for every batch row).
    Returns (B, N, F).
    """
    seg = segment_ids_from_cu_seqlens(cu_seqlens)
    num_seq = cu_seqlens.numel() - 1
    hw, w = _masked(h, context_mask)
    if w is None:
        w = torch.ones(h.shape[:2], dtype=hw.dtype, device=h.device)
    if not causal:
        total = _segment_sums(hw, seg, num_seq)
        count = _segment_sums(w, seg, num_seq)
        return _divide(total, count).index_select(1, seg)
    # Causal inside each sequence: a running sum restarted at every sequence start.
    # Prefix over the whole axis minus the prefix before the sequence's first token.
    total = _cumsum(hw, 1)
    count = _cumsum(w, 1)
    starts = cu_seqlens[:-1].long()
    zero_t = total.new_zeros((h.shape[0], 1, h.shape[2]))
    zero_c = count.new_zeros((h.shape[0], 1))
    before_t = torch.cat([zero_t, total], dim=1).index_select(1, starts)  # (B, S, F)
    before_c = torch.cat([zero_c, count], dim=1).index_select(1, starts)  # (B, S)
    total = total - before_t.index_select(1, seg)
    count = count - before_c.index_select(1, seg)
    return _divide(total, count)


def mean_dense(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """General (slow) form: query i reads the mean of tokens j with ``mask[b, i, j]``.

    h: (B, N, F); mask: (B, M, N) bool (or 0/1). O(M*N). Returns (B, M, F).
    """
    acc = accumulation_dtype(h.dtype)
    m = mask.to(acc)
    total = torch.bmm(m, h.to(acc))
    return _divide(total, m.sum(dim=-1))

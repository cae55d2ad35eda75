"""Aggregation, the PyTorch backend: the per-query mean of the context features.

The functions take the features ``h: (B, N, F)`` of the N context tokens and return the
state read by each query, in the accumulation dtype (float32; float64 if ``h`` is float64):

* ``(B, 1, F)`` when every query shares one state (full mode, with or without padding),
* ``(B, M, F)`` otherwise (one row per query; M = N for the self-mixing modes).

**Segment modes.** In the full, causal and block-causal modes the context tokens of a row
fall in consecutive *segments* (:class:`Segments`: one for the full mode, one per block,
one per token for the causal mode) and query i reads the mean of its own segment (full)
or of every segment up to its own (causal, block). The mean is then three linear maps:
per-segment sums (:meth:`Segments.sums`), the mean over segments
(:func:`segment_means`: a prefix over segments, an optional streaming state, a division
by the counts) and the read-out of each query's segment (:meth:`Segments.read`).
:func:`segment_aggregate` chains them on whole tensors; the token-chunked fused pass
(:mod:`polymixer.ops.pom.chunked`) runs the same pieces chunk by chunk, with
:func:`segment_means_adjoint` as the adjoint of the middle one. The packed and dense modes
have their own forms (:func:`mean_packed`, :func:`mean_dense`); the PyTorch adjoint of
every form is its autograd.

Every mode but :func:`mean_dense` is O(N) in time and memory: no N x N tensor is built.
An empty context set gives a zero state, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .plan import compiling

__all__ = [
    "accumulation_dtype",
    "Segments",
    "segment_counts",
    "segment_means",
    "segment_means_adjoint",
    "segment_aggregate",
    "stream_block",
    "mean_packed",
    "mean_dense",
    "block_ids_from_size",
    "block_ids_from_lengths",
    "segment_ids_from_cu_seqlens",
]




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
    return _opaque_cumsum(t, dim) if compiling() else t.cumsum(dim)


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


def _segment_sums(values: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum ``values: (B, N, ...)`` over tokens sharing an id; returns (B, S, ...)."""
    out = values.new_zeros((values.shape[0], num_segments) + tuple(values.shape[2:]))
    return out.index_add(1, ids, values)


# ----------------------------------------------------------------------------- segment modes
@dataclass(frozen=True)
class Segments:
    """The segments of the context tokens of a row (the same for every batch row).

    ``prefix=False``: one segment that every query reads (full mode; ``count == 1``).
    ``prefix=True``: query i reads the segments up to its own; ``ids: (N,)`` the
    non-decreasing segment of every token (block-causal), or None for one segment per
    token (causal, ``count == N``).
    """

    ids: torch.Tensor | None
    count: int
    prefix: bool

    @property
    def shared(self) -> bool:
        """True when every query reads the same state (the full mode)."""
        return not self.prefix

    @property
    def per_token(self) -> bool:
        """True when every token is its own segment (the causal mode)."""
        return self.prefix and self.ids is None

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """Sums of ``values: (B, N, ...)`` over the tokens of each segment: (B, count, ...)."""
        if self.shared:
            return values.sum(dim=1, keepdim=True)
        if self.ids is None:
            return values
        return _segment_sums(values, self.ids, self.count)

    def read(self, table: torch.Tensor) -> torch.Tensor:
        """The row of its segment for every query: ``table: (B, count, F)`` -> (B, N, F),
        or (B, 1, F) unexpanded in the full mode."""
        if self.ids is None:
            return table
        return table.index_select(1, self.ids)


def segment_counts(seg: Segments, weights: torch.Tensor | None, num_tokens: int, dtype, device) -> torch.Tensor:
    """Number of context tokens of each segment: ``(B, count)``, or ``(1, count)`` without
    padding weights ``weights: (B, N)`` (0/1)."""
    if weights is None:
        if seg.shared:
            return torch.full((1, 1), float(num_tokens), dtype=dtype, device=device)
        weights = torch.ones(1, num_tokens, dtype=dtype, device=device)
    return seg.sums(weights)


def segment_means(seg: Segments, total: torch.Tensor, count: torch.Tensor, stream=None,
                  inplace: bool = False) -> torch.Tensor:
    """The state each segment's queries read, from per-segment sums.

    total: (B, count, F) per-segment feature sums; count: (B or 1, count) per-segment
    token counts (:func:`segment_counts`); stream: optional ``(total (B, F), count (B,))``
    of tokens seen before, read by every query. Prefix over segments (when
    ``seg.prefix``), then the division by the counts (an empty set gives 0).
    ``inplace``: overwrite ``total`` (the fused pass's own buffer). Returns (B, count, F).
    """
    if seg.prefix:
        total = total.cumsum_(dim=1) if inplace else _cumsum(total, 1)
        count = _cumsum(count, 1)
    if stream is not None:
        s_total, s_count = stream
        total = total + s_total.to(total.dtype).unsqueeze(1)
        count = count + s_count.to(count.dtype).unsqueeze(1)
    count = count.clamp_min(1).unsqueeze(-1)
    return total.div_(count) if inplace else total / count


def segment_means_adjoint(seg: Segments, d_state: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`segment_means` (without a stream) w.r.t. ``total``, in place.

    d_state: (B, count, F) gradient of the segment states, overwritten; count as given
    to :func:`segment_means`. A division by the counts, then a reversed prefix over
    segments. Returns the gradient of the per-segment sums, (B, count, F).
    """
    if seg.prefix:
        count = count.cumsum(dim=1)
    g = d_state.div_(count.clamp_min(1).unsqueeze(-1))
    if seg.prefix:
        g = g.flip(1).cumsum_(dim=1).flip(1)
    return g


def segment_aggregate(h: torch.Tensor, seg: Segments, context_mask: torch.Tensor | None = None,
                      stream=None) -> torch.Tensor:
    """The mean of a segment mode on whole tensors: h (B, N, F) -> (B, 1, F) (full) or (B, N, F).

    context_mask: (B, N) bool or None; stream: as in :func:`segment_means`.
    """
    hw, w = _masked(h, context_mask)
    count = segment_counts(seg, w, h.shape[1], hw.dtype, h.device)
    return seg.read(segment_means(seg, seg.sums(hw), count, stream))


def stream_block(h: torch.Tensor, context_mask: torch.Tensor | None, total: torch.Tensor, count: torch.Tensor):
    """One block of a stream (docs/design.md, section 3): every token of the block reads the tokens
    seen before and the whole block.

    h: (B, t, F) features of the block; context_mask: (B, t) or None (padded tokens are
    left out); total (B, F), count (B,): the sums of the tokens seen before, in the
    state's dtype (float32, or float64 for a float64 stream). Returns ``(state (B, 1, F),
    new_total, new_count)``: the state the block's queries read (the accumulation dtype
    of h) and the sums with the block added (the state's dtype).
    """
    seg = Segments(None, 1, prefix=False)
    hw, w = _masked(h, context_mask)
    block_total = seg.sums(hw)  # (B, 1, F)
    block_count = segment_counts(seg, w, h.shape[1], hw.dtype, h.device)  # (B or 1, 1)
    state = segment_means(seg, block_total, block_count, stream=(total, count))
    return state, total + block_total[:, 0].to(total.dtype), count + block_count[:, 0].to(count.dtype)


def block_ids_from_size(num_tokens: int, block_size: int, device=None) -> torch.Tensor:
    """Block index of each token for blocks of ``block_size`` tokens (last may be shorter)."""
    # Truncating division (= floor for these non-negative values): inductor's CPU code for
    # ``arange // int`` (torch 2.13) leaves the vector tail unwritten (garbage ids).
    return torch.div(torch.arange(num_tokens, device=device), block_size, rounding_mode="trunc")


def block_ids_from_lengths(block_lengths: Sequence[int] | torch.Tensor, device=None) -> torch.Tensor:
    """Block index of each token for consecutive blocks of the given lengths."""
    lengths = torch.as_tensor(block_lengths, dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)


# ----------------------------------------------------------------------------- other modes
def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Sequence index of each token of a packed batch given cumulative lengths (S + 1,)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(
        torch.arange(lengths.numel(), device=cu_seqlens.device), lengths.long()
    )


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

"""Token-chunked forward and backward of the mixer in the full, causal and block modes.

All three modes are *segment* modes: the context tokens of a batch row fall in
consecutive segments (one segment for the full mode, one per block for the block-causal
mode, one per token for the causal mode), and query i reads the mean of the features of
its own segment (full) or of every segment up to its own (causal, block). So the mixer
is token-local apart from a (B, segments, F) reduction:

* forward: segment sums of the features (chunk by chunk), a prefix over segments, then
  the gated output chunk by chunk;
* backward: phase A over query chunks (output projection, gate, the gradient reaching the
  states, summed per segment), phase B the adjoint of the mean over segments (a reversed
  prefix), phase C over context chunks (feature derivatives and input projection).

Working through the flattened ``B*N`` token rows in chunks keeps every F-wide temporary
at ``chunk x F`` (in cache on a CPU, and a low peak), and the projections run as chunk
GEMMs written into their buffers, accumulating the weight gradients (in float32 for low
precision inputs). The element-wise work of a chunk is one call of
:class:`polymixer.ops.elementwise.ChunkOps` per phase (compiled on CUDA). Only the
causal mode has an F-wide segment tensor (one segment per token). Used by
:class:`polymixer.ops.fused.FusedPolynomialMix`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .elementwise import chunk_ops

__all__ = ["chunk_rows", "Segments", "segments_of", "segment_forward", "segment_backward"]


def chunk_rows(width: int, device=None) -> int:
    """Token rows per chunk: one F-wide float32 chunk of about 4 MB on CPU (it stays in
    cache), 256 MB on a GPU (few large kernels; launches, not caches, are the cost)."""
    if device is not None and torch.device(device).type == "cuda":
        return max(4096, min(1 << 16, (256 << 20) // (4 * max(width, 1))))
    return max(256, min(8192, (4 << 20) // (4 * max(width, 1))))


@dataclass
class Segments:
    """Segment of every token of a row: ``ids (N,)`` long, ``count`` segments, ``prefix``
    True when a query reads every segment up to its own (causal, block), False when it
    reads its own only (full: one segment)."""

    ids: torch.Tensor | None  # None: segment = token index (causal)
    count: int
    prefix: bool


def segments_of(mode, num_tokens: int, device) -> Segments:
    """The :class:`Segments` of a full, causal or block ``ContextMode``."""
    if mode.kind == "full":
        return Segments(torch.zeros(num_tokens, dtype=torch.long, device=device), 1, False)
    if mode.kind == "causal":
        return Segments(None, num_tokens, True)
    if mode.kind == "block":
        return Segments(mode.block_ids.to(device), mode.num_blocks, True)
    raise ValueError(f"no segment form for the {mode.kind} context mode")


def _chunks(seg: Segments, batch: int, tokens: int, step: int):
    """``(start, stop)`` ranges of at most ``step`` flattened token rows. In the full mode
    a chunk never crosses a batch row unless it holds whole rows (so its states are one
    row of the table per batch row, see :class:`_Rows`)."""
    total = batch * tokens
    if seg.ids is None or seg.count != 1 or tokens == 0:
        return [(a, min(a + step, total)) for a in range(0, total, step)]
    if tokens <= step:  # whole batch rows per chunk
        rows = (step // tokens) * tokens
        return [(a, min(a + rows, total)) for a in range(0, total, rows)]
    pieces = -(-tokens // step)  # split every row evenly
    size = -(-tokens // pieces)
    return [(b * tokens + a, b * tokens + min(a + size, tokens)) for b in range(batch) for a in range(0, tokens, size)]


class _Rows:
    """How the token rows ``start:stop`` of a chunk map to a flattened (B * segments, F)
    table of states.

    * causal: one segment per token, the table rows are the token rows (``slice``);
    * full: the chunk covers whole batch rows or part of one (see :func:`_chunks`); its
      element-wise work runs on ``(nb, t / nb, .)`` views and reads ``table[b0:b1]`` as
      ``(nb, 1, F)`` (``group``): no per-token copy of the states, sums without atomics;
    * block: a per-token index into the table (``ids``), summed with ``index_add_`` (CPU)
      or a segmented reduction over the consecutive ids (GPU: no atomics).
    """

    def __init__(self, seg: Segments, tokens: int, start: int, stop: int, device):
        self.slice = self.group = self.ids = None
        if seg.ids is None:
            self.slice = slice(start, stop)
        elif seg.count == 1:
            b0, b1 = start // tokens, (stop - 1) // tokens + 1
            self.group = (b0, b1)
        else:
            rows = torch.arange(start, stop, device=device)
            self.ids = (rows // tokens) * seg.count + seg.ids.index_select(0, rows % tokens)

    def view(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """Chunk rows ``(t, ...)`` as the element-wise functions take them."""
        if t is None or self.group is None:
            return t
        nb = self.group[1] - self.group[0]
        return t.view(nb, t.shape[0] // nb, *t.shape[1:])

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.group is None else t.reshape(-1, t.shape[-1])

    def read(self, table: torch.Tensor) -> torch.Tensor:
        """The states of the chunk's tokens: ``(t, F)``, or ``(nb, 1, F)`` (group)."""
        if self.slice is not None:
            return table[self.slice]
        if self.group is not None:
            return table[self.group[0]:self.group[1]].unsqueeze(1)
        return table.index_select(0, self.ids)

    @property
    def sums_rows(self) -> bool:
        """True when the element-wise functions should sum over tokens (group chunks)."""
        return self.group is not None

    def add(self, table: torch.Tensor, values: torch.Tensor) -> None:
        """``table[segment of token] += values``; values already summed per batch row for
        group chunks (``(nb, F)``), per token otherwise (``(t, F)``)."""
        if self.slice is not None:
            table[self.slice] += values
        elif self.group is not None:
            table[self.group[0]:self.group[1]] += values
        elif values.is_cuda:
            ids, counts = torch.unique_consecutive(self.ids, return_counts=True)
            table.index_add_(0, ids, torch.segment_reduce(values.to(table.dtype), "sum", lengths=counts, axis=0))
        else:
            table.index_add_(0, self.ids, values.to(table.dtype))


def _segment_counts(seg: Segments, batch: int, tokens: int, weights, acc, device) -> torch.Tensor:
    """(B, segments) number of context tokens each query's set holds (prefix when seg.prefix)."""
    w = torch.ones(batch, tokens, dtype=acc, device=device) if weights is None else weights.view(batch, tokens)
    if seg.ids is None:
        counts = w
    else:
        counts = w.new_zeros(batch, seg.count).index_add_(1, seg.ids, w)
    return counts.cumsum(dim=1) if seg.prefix else counts


def _project(inp, weight, bias, out=None):
    """``inp @ weight.T + bias``, written into ``out`` (a contiguous row slice) if given."""
    if out is None:
        return F.linear(inp, weight, bias)
    if bias is None:
        return torch.mm(inp, weight.t(), out=out)
    return torch.addmm(bias, inp, weight.t(), out=out)


def segment_forward(variant: str, degree: int, seg: Segments, x, c, w_h, b_h, coeff, w_s, b_s, w_o, b_o,
                    context_mask, keep_projections: bool):
    """Forward pass. Returns ``(y, state, u, z)``: state ``(B * segments, F)`` (float32),
    u and z the two projections as rows when ``keep_projections`` (else None)."""
    ctx_in = x if c is None else c
    B, N, _ = ctx_in.shape
    M = x.shape[1]
    c2, x2 = ctx_in.reshape(B * N, -1), x.reshape(B * M, -1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w2 = None if context_mask is None else context_mask.reshape(B * N).to(acc)
    ops = chunk_ops(x.device, B * max(N, M))
    u_all = torch.empty(B * N, w_h.shape[0], dtype=x.dtype, device=x.device) if keep_projections else None
    state = _state_table(ops, variant, degree, seg, c2, B, N, w_h, b_h, coeff, None, u_all, w2, acc)
    width = state.shape[-1]
    y = torch.empty(B * M, w_o.shape[0], dtype=x.dtype, device=x.device)
    z_all = torch.empty(B * M, w_s.shape[0], dtype=x.dtype, device=x.device) if keep_projections else None
    for start, stop in _chunks(seg, B, M, chunk_rows(width, x.device)):
        rows = _Rows(seg, M, start, stop, x.device)
        z_c = _project(x2[start:stop], w_s, b_s, None if z_all is None else z_all[start:stop])
        gated = rows.flat(ops.gated(variant, rows.view(z_c), rows.read(state), width))
        _project(gated, w_o, b_o, y[start:stop])
    return y.view(B, M, -1), state, u_all, z_all


def segment_backward(variant: str, degree: int, seg: Segments, dy, x, c, w_h, b_h, coeff, w_s, b_s, w_o, has_b_o,
                     state, u_all, z_all, context_mask):
    """Backward pass; ``state`` is the forward's (B * segments, F) table or None (recomputed
    from the features); u_all/z_all the kept projections or None (lean: recomputed).

    Returns ``(d_x, d_c, d_w_h, d_b_h, d_coeff, d_w_s, d_b_s, d_w_o, d_b_o)``.
    """
    ctx_in = x if c is None else c
    B, N, _ = ctx_in.shape
    M = x.shape[1]
    c2, x2, dy2 = ctx_in.reshape(B * N, -1), x.reshape(B * M, -1), dy.reshape(B * M, -1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w2 = None if context_mask is None else context_mask.reshape(B * N).to(acc)
    ops = chunk_ops(x.device, B * max(N, M))
    if state is None:  # recompute the per-segment states from the (kept or recomputed) projections
        state = _state_table(ops, variant, degree, seg, c2, B, N, w_h, b_h, coeff, u_all, None, w2, acc)
    width = state.shape[-1]
    # Weight gradients accumulate over chunks in float32 (float64) whatever the compute dtype.
    d_w_o = torch.zeros(w_o.shape, dtype=acc, device=x.device)
    d_b_o = dy2.sum(dim=0, dtype=acc) if has_b_o else None
    d_w_s = torch.zeros(w_s.shape, dtype=acc, device=x.device)
    d_b_s = torch.zeros(b_s.shape, dtype=acc, device=x.device) if b_s is not None else None
    d_seg = torch.zeros(B * seg.count, width, dtype=acc, device=x.device)
    d_x2 = torch.empty_like(x2)
    # Phase A: the gate side, over query rows.
    for start, stop in _chunks(seg, B, M, chunk_rows(width, x.device)):
        rows = _Rows(seg, M, start, stop, x.device)
        x_c = x2[start:stop]
        z_c = z_all[start:stop] if z_all is not None else F.linear(x_c, w_s, b_s)
        dy_c = dy2[start:stop]
        d_gated = dy_c @ w_o  # (t, F)
        gated, d_state, d_z = ops.gate_backward(variant, rows.view(z_c), rows.read(state), rows.view(d_gated),
                                                width, rows.sums_rows, acc)
        del d_gated
        _add_mm(d_w_o, dy_c.t(), rows.flat(gated))
        del gated
        rows.add(d_seg, d_state)
        d_z = rows.flat(d_z)
        torch.mm(d_z, w_s, out=d_x2[start:stop])
        _add_mm(d_w_s, d_z.t(), x_c)
        if d_b_s is not None:
            d_b_s += d_z.sum(dim=0, dtype=acc)
    # Phase B: adjoint of the mean: divide by the counts, reversed prefix over segments.
    # (The states are not needed any more: with one segment per token (causal) they and
    # d_seg are F-wide, so at most two such tensors are alive at once from here.)
    state = None
    counts = _segment_counts(seg, B, N, w2, acc, x.device)
    g = d_seg.view(B, seg.count, width).div_(counts.clamp_min(1).unsqueeze(-1))
    del d_seg
    if seg.prefix:
        g = g.flip(1)
        g = g.cumsum_(dim=1).flip(1)
    g = g.reshape(B * seg.count, width)
    # Phase C: the feature side, over context rows.
    d_w_h = torch.zeros(w_h.shape, dtype=acc, device=x.device)
    d_b_h = torch.zeros(b_h.shape, dtype=acc, device=x.device) if b_h is not None else None
    d_coeff = torch.zeros(coeff.shape, dtype=acc, device=x.device) if coeff is not None else None
    d_c2 = d_x2 if c is None else torch.empty_like(c2)
    for start, stop in _chunks(seg, B, N, chunk_rows(w_h.shape[0], x.device)):
        rows = _Rows(seg, N, start, stop, x.device)
        c_c = c2[start:stop]
        u_c = u_all[start:stop] if u_all is not None else F.linear(c_c, w_h, b_h)
        # (float16 keeps float32: the feature derivatives are taken in float32 there)
        dh = rows.read(g).to(torch.float32 if u_c.dtype == torch.float16 else u_c.dtype)
        w_c = None if w2 is None else rows.view(w2[start:stop])
        du_parts, d_coeff_c = ops.feature_backward(variant, degree, rows.view(u_c), coeff, dh, w_c)
        if d_coeff_c is not None:
            d_coeff += d_coeff_c.to(acc)
        row, d_out = 0, d_c2[start:stop]
        for i, part in enumerate(du_parts):
            part = rows.flat(part)
            w_part = w_h[row:row + part.shape[-1]]
            if c is None or i > 0:
                d_out.addmm_(part, w_part)
            else:
                torch.mm(part, w_part, out=d_out)
            _add_mm(d_w_h[row:row + part.shape[-1]], part.t(), c_c)
            if d_b_h is not None:
                d_b_h[row:row + part.shape[-1]] += part.sum(dim=0, dtype=acc)
            row += part.shape[-1]
    d_x = d_x2.view_as(x)
    d_c = None if c is None else d_c2.view_as(c)
    if d_coeff is not None:
        d_coeff = d_coeff.to(coeff.dtype)
    d_w_h, d_w_s, d_w_o = d_w_h.to(w_h.dtype), d_w_s.to(w_s.dtype), d_w_o.to(w_o.dtype)
    d_b_h = None if d_b_h is None else d_b_h.to(b_h.dtype)
    d_b_s = None if d_b_s is None else d_b_s.to(b_s.dtype)
    d_b_o = None if d_b_o is None else d_b_o.to(w_o.dtype)
    return d_x, d_c, d_w_h, d_b_h, d_coeff, d_w_s, d_b_s, d_w_o, d_b_o


def _add_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b``: in place when the dtypes agree, else through a product in a/b's dtype."""
    if out.dtype == a.dtype:
        out.addmm_(a, b)
    else:
        out += a @ b


def _state_table(ops, variant, degree, seg, c2, batch, tokens, w_h, b_h, coeff, u_in, u_out, w2, acc):
    """``(B * segments, F)`` mean state of every segment (prefix over segments when
    ``seg.prefix``), from the context rows ``c2`` chunk by chunk. ``u_in``: the kept
    projection rows to reuse, or None (computed); ``u_out``: a buffer to keep them in."""
    width = w_h.shape[0]  # F for both variants (product: k parts of e*D; power: e*D)
    total = torch.zeros(batch * seg.count, width, dtype=acc, device=c2.device)
    for start, stop in _chunks(seg, batch, tokens, chunk_rows(width, c2.device)):
        rows = _Rows(seg, tokens, start, stop, c2.device)
        if u_in is not None:
            u_c = u_in[start:stop]
        else:
            u_c = _project(c2[start:stop], w_h, b_h, None if u_out is None else u_out[start:stop])
        w_c = None if w2 is None else rows.view(w2[start:stop])
        if rows.sums_rows:
            rows.add(total, ops.feature_sum(variant, degree, rows.view(u_c), coeff, w_c, acc))
        else:
            rows.add(total, ops.features(variant, degree, u_c, coeff, w_c).to(acc))
    state = total.view(batch, seg.count, width)
    if seg.prefix:
        state.cumsum_(dim=1)
    counts = _segment_counts(seg, batch, tokens, w2, acc, c2.device)
    return state.div_(counts.clamp_min(1).unsqueeze(-1)).view(batch * seg.count, width)

"""The fused/lean passes of the mixer, token-chunked: forward and hand-written backward.

``y = W_o (s(W_s x + b_s) * A(h(W_h c + b_h))) + b_o`` where A is the mode's aggregation.
Working through the flattened ``B*N`` token rows in chunks keeps every F-wide temporary
at ``chunk x F`` (in cache on a CPU, and a low peak); the projections run as chunk GEMMs
written into their buffers, accumulating the weight gradients (in float32 for low
precision inputs); each chunk's element-wise work is one call of
:class:`~polymixer.ops.pom.chunk_ops.ChunkOps` per phase (compiled or not, as planned).

The aggregation comes in two shapes, one per kind of mode:

* **segment modes** (full, causal, block-causal: :class:`~polymixer.ops.aggregation.Segments`):
  the features are summed per segment chunk by chunk into a (B * segments, F) table, made
  into the segment states by :func:`~polymixer.ops.aggregation.segment_means`; a query
  reads its segment's row. Backward: phase A over query chunks (output projection, gate,
  the gradient reaching the states, summed per segment), phase B the adjoint of the mean
  (:func:`~polymixer.ops.aggregation.segment_means_adjoint`), phase C over context chunks
  (feature derivatives and input projection). Only the causal mode has an F-wide table
  (one segment per token).
* **other modes** (packed, dense): the features of the whole context, the mode's own
  aggregation (:meth:`~polymixer.ops.context.ContextMode.aggregate`) to a (B * M, F) table
  of per-query states, and its autograd as the adjoint in phase B; phases A and C and the
  output are chunked as above, with one table row per token.

**Rotary positions** (query placement ``"state"``, :mod:`.rotary`): each context chunk's
features are rotated by their tokens' angles before they are summed, each query chunk's
states rotated back by the queries' angles before the gate; the backward pass applies the
adjoints (the opposite rotations) to the states' gradient in phase A, per token before it
is summed per segment, and to the features' gradient in phase C. The rotations are
element-wise on chunk-sized tensors, so no F-wide tensor is added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..aggregation import Segments, segment_counts, segment_means, segment_means_adjoint
from .chunk_ops import ChunkOps
from .rotary import rotate_by, turns
from .spec import MixerWeights

__all__ = ["mix_forward", "mix_backward"]


def _chunks(seg: Segments | None, batch: int, tokens: int, step: int):
    """``(start, stop)`` ranges of at most ``step`` flattened token rows. In the full mode
    a chunk never crosses a batch row unless it holds whole rows (so its states are one
    row of the table per batch row, see :class:`_TableRows`)."""
    total = batch * tokens
    if seg is None or not seg.shared or tokens == 0:
        return [(a, min(a + step, total)) for a in range(0, total, step)]
    if tokens <= step:  # whole batch rows per chunk
        rows = (step // tokens) * tokens
        return [(a, min(a + rows, total)) for a in range(0, total, rows)]
    pieces = -(-tokens // step)  # split every row evenly
    size = -(-tokens // pieces)
    return [(b * tokens + a, b * tokens + min(a + size, tokens)) for b in range(batch) for a in range(0, tokens, size)]


class _TableRows:
    """How the token rows ``start:stop`` of a chunk map to a flattened (B * rows, F) table.

    * one table row per token (causal, and the whole-tensor modes: ``seg`` None): ``slice``;
    * full: the chunk covers whole batch rows or part of one (see :func:`_chunks`); its
      element-wise work runs on ``(nb, t / nb, .)`` views and reads ``table[b0:b1]`` as
      ``(nb, 1, F)`` (``group``): no per-token copy of the states, sums without atomics;
    * block: a per-token index into the table (``ids``), summed with ``index_add_`` (CPU)
      or a segmented reduction over the consecutive ids (GPU: no atomics).
    """

    def __init__(self, seg: Segments | None, tokens: int, start: int, stop: int, device):
        self.slice = self.group = self.ids = None
        if seg is None or seg.per_token:
            self.slice = slice(start, stop)
        elif seg.shared:
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
        """``table[row of token] += values``; values already summed per batch row for
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


def _buffer(rows: int, width: int, bias, like: torch.Tensor) -> torch.Tensor:
    """A (rows, width) buffer for a projection's output rows, holding the bias rows (if
    any) already: :func:`_project` then adds the chunks' products into it. One copy per
    call instead of one per chunk (each a parallel region on a multithreaded CPU)."""
    if bias is None:
        return torch.empty(rows, width, dtype=like.dtype, device=like.device)
    return bias.to(like.dtype).expand(rows, width).contiguous()


def _project(inp, weight, bias, out=None):
    """``inp @ weight.T + bias``; with ``out`` (a contiguous row slice of a :func:`_buffer`
    made with the same bias, which it already holds) written into it."""
    if out is None:
        return F.linear(inp, weight, bias)
    if bias is None:
        return torch.mm(inp, weight.t(), out=out)
    return out.addmm_(inp, weight.t())


def _add_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b``: in place when the dtypes agree, else through a product in a/b's dtype."""
    if out.dtype == a.dtype:
        out.addmm_(a, b)
    else:
        out += a @ b


class _ChunkedCall:
    """The shapes and flattened views of one call, shared by the forward and backward."""

    def __init__(self, mode, x, c, chunk_rows: int, angles=None, query_angles=None):
        self.ctx_in = x if c is None else c
        self.B, self.N, _ = self.ctx_in.shape
        self.M = x.shape[1]
        self.c2 = self.ctx_in.reshape(self.B * self.N, -1)
        self.x2 = x.reshape(self.B * self.M, -1)
        self.acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.mode, self.chunk = mode, chunk_rows
        self.seg = mode.segments(self.N)
        # Segment modes apply the padding weights themselves; the others' aggregation does.
        mask = mode.context_mask if self.seg is not None else None
        self.w2 = None if mask is None else mask.reshape(self.B * self.N).to(self.acc)
        # rotary: the rotations exp(i angle) of the context tokens and the queries, once per call
        self.turn = None if angles is None else turns(angles)
        self.query_turn = self.turn if query_angles is angles else (
            None if query_angles is None else turns(query_angles))

    @staticmethod
    def _turn_rows(turn: torch.Tensor, tokens: int, rows: "_TableRows", start: int, stop: int) -> torch.Tensor:
        """The rotations of the flattened token rows ``start:stop`` in the chunk functions'
        shape (``turn: (tokens, P)`` shared by the batch, or ``(B, tokens, P)``): whole
        batch rows of shared positions as ``(1, tokens, P)``, no copy."""
        if turn.dim() == 3 and turn.shape[0] > 1:
            return rows.view(turn.reshape(-1, turn.shape[-1])[start:stop])
        turn = turn.reshape(tokens, -1)
        if rows.group is not None and start % tokens == 0 and (stop - start) % tokens == 0:
            return turn.unsqueeze(0)  # whole rows: broadcast over them
        if start // tokens == (stop - 1) // tokens:  # inside one batch row: a slice
            return rows.view(turn[start % tokens:(stop - 1) % tokens + 1])
        return rows.view(turn.index_select(0, torch.arange(start, stop, device=turn.device) % tokens))

    def context_turns(self, rows: "_TableRows", start: int, stop: int) -> torch.Tensor:
        """The context tokens' rotations of rows ``start:stop`` (chunk functions' shape)."""
        return self._turn_rows(self.turn, self.N, rows, start, stop)

    def query_turns(self, rows: "_TableRows", start: int, stop: int) -> torch.Tensor:
        """The queries' rotations of rows ``start:stop`` (chunk functions' shape)."""
        return self._turn_rows(self.query_turn, self.M, rows, start, stop)

    def rows(self, tokens: int):
        for start, stop in _chunks(self.seg, self.B, tokens, self.chunk):
            yield start, stop, _TableRows(self.seg, tokens, start, stop, self.x2.device)

    def counts(self) -> torch.Tensor:
        w = None if self.w2 is None else self.w2.view(self.B, self.N)
        return segment_counts(self.seg, w, self.N, self.acc, self.x2.device)

    def state_table(self, ops: ChunkOps, weights: MixerWeights, u_in, u_out) -> torch.Tensor:
        """The states the queries read, as a table: ``(B * segments, F)`` (segment modes)
        or ``(B * M, F)`` (one row per query). ``u_in``: the kept projection rows to reuse,
        or None (computed); ``u_out``: a buffer to keep them in (a :func:`_buffer` with
        the bias ``b_h``)."""
        w_h, b_h, coeff = weights.w_h, weights.b_h, weights.coeff
        width = w_h.shape[0]  # F for both variants (product: k parts of e*D; power: e*D)
        if self.seg is None:
            u = u_in if u_in is not None else _project(self.c2, w_h, b_h, u_out)
            h = ops.features(u, coeff, None).view(self.B, self.N, -1)
            if self.turn is not None:
                h = rotate_by(h, self.turn)
            return self.mode.aggregate(h).reshape(self.B * self.M, -1)
        seg = self.seg
        total = torch.zeros(self.B * seg.count, width, dtype=self.acc, device=self.c2.device)
        for start, stop, rows in self.rows(self.N):
            if u_in is not None:
                u_c = u_in[start:stop]
            else:
                u_c = _project(self.c2[start:stop], w_h, b_h, None if u_out is None else u_out[start:stop])
            w_c = None if self.w2 is None else rows.view(self.w2[start:stop])
            if self.turn is not None:  # rotate each token's features, then sum
                h = rotate_by(ops.features(rows.view(u_c), coeff, w_c), self.context_turns(rows, start, stop))
                rows.add(total, h.sum(dim=-2, dtype=self.acc) if rows.sums_rows else h.to(self.acc))
            elif rows.sums_rows:
                rows.add(total, ops.feature_sum(rows.view(u_c), coeff, w_c, self.acc))
            else:
                rows.add(total, ops.features(u_c, coeff, w_c).to(self.acc))
        state = segment_means(seg, total.view(self.B, seg.count, width), self.counts(), inplace=True)
        return state.view(self.B * seg.count, width)


def _query_states(call: _ChunkedCall, rows: _TableRows, state: torch.Tensor, start: int, stop: int):
    """The states the queries of rows ``start:stop`` read: their table rows, rotated back
    by the queries' own angles with rotary positions (then one per token)."""
    H = rows.read(state)
    if call.query_turn is None:
        return H
    return rotate_by(H, call.query_turns(rows, start, stop), inverse=True)


def mix_forward(mode, x: torch.Tensor, c: torch.Tensor | None, weights: MixerWeights,
                ops: ChunkOps, chunk_rows: int, keep_projections: bool, keep_states: bool,
                angles: torch.Tensor | None = None, query_angles: torch.Tensor | None = None):
    """Forward pass: x (B, M, D) queries, c (B, N, D) context or None (self-mixing);
    ``angles``, ``query_angles``: rotary angles ``(N or B, N, F/2)`` of the context
    tokens and ``(M or B, M, F/2)`` of the queries (both or neither).

    Returns ``(y, state, u, z)``: y (B, M, D); the segment states when ``keep_states``
    (segment modes only), else None; u and z the two projections' rows when
    ``keep_projections`` (else None). Both are the plan's choice
    (:func:`~polymixer.ops.plan.choose_path`).
    """
    call = _ChunkedCall(mode, x, c, chunk_rows, angles, query_angles)
    w_s, b_s, w_o, b_o = weights.w_s, weights.b_s, weights.w_o, weights.b_o
    u_all = _buffer(call.B * call.N, weights.w_h.shape[0], weights.b_h, x) if keep_projections else None
    state = call.state_table(ops, weights, None, u_all)
    y = _buffer(call.B * call.M, w_o.shape[0], b_o, x)
    z_all = _buffer(call.B * call.M, w_s.shape[0], b_s, x) if keep_projections else None
    for start, stop, rows in call.rows(call.M):
        z_c = _project(call.x2[start:stop], w_s, b_s, None if z_all is None else z_all[start:stop])
        gated = rows.flat(ops.gated(rows.view(z_c), _query_states(call, rows, state, start, stop)))
        _project(gated, w_o, b_o, y[start:stop])
    if call.seg is None or not keep_states:
        state = None
    return y.view(call.B, call.M, -1), state, u_all, z_all


def mix_backward(mode, dy: torch.Tensor, x: torch.Tensor, c: torch.Tensor | None,
                 weights: MixerWeights, ops: ChunkOps, chunk_rows: int, state, u_all, z_all,
                 angles: torch.Tensor | None = None, query_angles: torch.Tensor | None = None):
    """Backward pass; ``state``, ``u_all``, ``z_all`` as returned by :func:`mix_forward`
    (None: recomputed), ``angles`` and ``query_angles`` as given to it. Returns the
    gradients ``(d_x, d_c, *d_weights)`` in the order of
    :class:`~polymixer.ops.pom.spec.MixerWeights`.
    """
    call = _ChunkedCall(mode, x, c, chunk_rows, angles, query_angles)
    rotary = query_angles is not None
    w_h, b_h, coeff, w_s, b_s, w_o, b_o = weights
    B, N, M, acc, x2 = call.B, call.N, call.M, call.acc, call.x2
    dy2 = dy.reshape(B * M, -1)
    if state is None:  # recompute the states from the (kept or recomputed) projections
        state = call.state_table(ops, weights, u_all, None)
    width = state.shape[-1]
    # Weight gradients accumulate over chunks in float32 (float64) whatever the compute dtype.
    d_w_o = torch.zeros(w_o.shape, dtype=acc, device=x.device)
    d_b_o = dy2.sum(dim=0, dtype=acc) if b_o is not None else None
    d_w_s = torch.zeros(w_s.shape, dtype=acc, device=x.device)
    d_b_s = torch.zeros(b_s.shape, dtype=acc, device=x.device) if b_s is not None else None
    d_table = torch.zeros(state.shape, dtype=acc, device=x.device)
    d_x2 = torch.empty_like(x2)
    # Phase A: the gate side, over query rows.
    for start, stop, rows in call.rows(M):
        x_c = x2[start:stop]
        z_c = z_all[start:stop] if z_all is not None else F.linear(x_c, w_s, b_s)
        dy_c = dy2[start:stop]
        d_gated = dy_c @ w_o  # (t, F)
        gated, d_state, d_z, d_b = ops.gate_backward(rows.view(z_c), _query_states(call, rows, state, start, stop),
                                                     rows.view(d_gated), rows.sums_rows and not rotary, acc,
                                                     d_b_s is not None)
        del d_gated
        if rotary:  # the adjoint of the rotation back: each token's gradient turned by its angles, then summed
            d_state = rotate_by(d_state, call.query_turns(rows, start, stop))
            if rows.sums_rows:
                d_state = d_state.sum(dim=-2)
        _add_mm(d_w_o, dy_c.t(), rows.flat(gated))
        del gated
        rows.add(d_table, d_state)
        d_z = rows.flat(d_z)
        torch.mm(d_z, w_s, out=d_x2[start:stop])
        _add_mm(d_w_s, d_z.t(), x_c)
        if d_b_s is not None:
            d_b_s += d_b
    # Phase B: the adjoint of the aggregation. (The states are not needed any more: with
    # one table row per token they and d_table are F-wide, so at most two such tensors
    # are alive at once from here.)
    state = None
    dh_dtype = torch.float32 if x.dtype == torch.float16 else x.dtype  # (fp16 features: float32)
    if call.seg is not None:
        g = segment_means_adjoint(call.seg, d_table.view(B, call.seg.count, width), call.counts())
        g = g.reshape(B * call.seg.count, width)
    else:  # the mode's own aggregation is linear in h: its autograd is the adjoint
        with torch.enable_grad():
            h = torch.zeros(B, N, width, dtype=dh_dtype, device=x.device, requires_grad=True)
            out = mode.aggregate(h)
            (g,) = torch.autograd.grad(out, h, d_table.view(out.shape).to(out.dtype))
        g = g.reshape(B * N, width)
    del d_table
    # Phase C: the feature side, over context rows.
    d_w_h = torch.zeros(w_h.shape, dtype=acc, device=x.device)
    d_b_h = torch.zeros(b_h.shape, dtype=acc, device=x.device) if b_h is not None else None
    d_coeff = torch.zeros(coeff.shape, dtype=acc, device=x.device) if coeff is not None else None
    d_c2 = d_x2 if c is None else torch.empty_like(call.c2)
    for start, stop, rows in call.rows(N):
        c_c = call.c2[start:stop]
        u_c = u_all[start:stop] if u_all is not None else F.linear(c_c, w_h, b_h)
        dh = rows.read(g).to(dh_dtype)
        if rotary:  # the adjoint of the features' rotation (per token)
            dh = rotate_by(dh, call.context_turns(rows, start, stop), inverse=True)
        w_c = None if call.w2 is None else rows.view(call.w2[start:stop])
        du_parts, d_coeff_c, d_b_parts = ops.feature_backward(rows.view(u_c), coeff, dh, w_c,
                                                              None if d_b_h is None else acc)
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
                d_b_h[row:row + part.shape[-1]] += d_b_parts[i]
            row += part.shape[-1]
    d_x = d_x2.view_as(x)
    d_c = None if c is None else d_c2.view_as(c)

    def back(g, like):
        return None if g is None else g.to(like.dtype)

    return (d_x, d_c, back(d_w_h, w_h), back(d_b_h, b_h), back(d_coeff, coeff), back(d_w_s, w_s),
            back(d_b_s, b_s), back(d_w_o, w_o), back(d_b_o, w_o))

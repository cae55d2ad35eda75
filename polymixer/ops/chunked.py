"""Token-chunked forward and backward of the mixer in the full (and padding) mode.

In the full mode every query of a batch row reads the same (F,) state, so the whole
mixer is token-local apart from two (B, F) reductions. Working through the flattened
``B*N`` token rows in chunks keeps every F-wide temporary at ``chunk x F`` (it stays in
cache and the peak memory stays low), and the projections run as chunk GEMMs that
accumulate the weight gradients in place. Used by :class:`polymixer.ops.fused.FusedPolynomialMix`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["chunk_rows", "full_forward", "full_backward"]


def chunk_rows(width: int, target_bytes: int = 4 << 20) -> int:
    """Token rows per chunk so that one F-wide chunk holds about ``target_bytes`` in float32."""
    return max(256, min(8192, target_bytes // (4 * max(width, 1))))


def _row_ids(start: int, stop: int, tokens: int, device) -> tuple[torch.Tensor | None, int | None]:
    """Batch row of each flattened token row in [start, stop): (ids, None), or (None, b) if one row."""
    first, last = start // tokens, (stop - 1) // tokens
    if first == last:
        return None, first
    return torch.arange(start, stop, device=device) // tokens, None


def _rows_of(table: torch.Tensor, ids, single):
    """``table: (B, F)`` rows for a chunk: (1, F) when the chunk lies in one batch row."""
    return table[single].unsqueeze(0) if ids is None else table.index_select(0, ids)


def _add_rows(acc: torch.Tensor, values: torch.Tensor, ids, single) -> None:
    """``acc[b] += sum of values over the chunk's tokens of batch row b``; acc: (B, F)."""
    if ids is None:
        acc[single] += values.sum(dim=0, dtype=acc.dtype)
    else:
        acc.index_add_(0, ids, values.to(acc.dtype))


def full_forward(fns, x, c, w_h, b_h, coeff, w_s, b_s, w_o, b_o, context_mask, keep_projections: bool):
    """Forward pass of the full mode. Returns ``(y, state (B, 1, F), u, z)``.

    ``fns`` supplies ``features(u)``, ``gate(z)``, ``expand_heads(s, F)``; u and z (the two
    projections, flattened to rows) are returned only when ``keep_projections``.
    """
    ctx_in = x if c is None else c
    B, N, _ = ctx_in.shape
    M = x.shape[1]
    c2 = ctx_in.reshape(B * N, -1)
    x2 = x.reshape(B * M, -1)
    width_u = w_h.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w2 = None if context_mask is None else context_mask.reshape(B * N).to(acc)
    feature_width = None
    total = None
    u_all = torch.empty(B * N, width_u, dtype=x.dtype, device=x.device) if keep_projections else None
    step = chunk_rows(width_u)
    for start in range(0, B * N, step):
        stop = min(start + step, B * N)
        u_c = F.linear(c2[start:stop], w_h, b_h)
        if u_all is not None:
            u_all[start:stop] = u_c
        h_c = fns.features(u_c)
        if total is None:
            feature_width = h_c.shape[-1]
            total = torch.zeros(B, feature_width, dtype=acc, device=x.device)
        if w2 is not None:
            h_c = h_c * w2[start:stop].unsqueeze(-1).to(h_c.dtype)
        ids, single = _row_ids(start, stop, N, x.device)
        _add_rows(total, h_c, ids, single)
    if w2 is None:
        count = torch.full((B, 1), float(N), dtype=acc, device=x.device)
    else:
        count = w2.view(B, N).sum(dim=1, keepdim=True)
    state = total / count.clamp_min(1)  # (B, F)
    y = torch.empty(B * M, w_o.shape[0], dtype=x.dtype, device=x.device)
    z_all = None
    step = chunk_rows(feature_width)
    for start in range(0, B * M, step):
        stop = min(start + step, B * M)
        z_c = F.linear(x2[start:stop], w_s, b_s)
        if keep_projections:
            if z_all is None:
                z_all = torch.empty(B * M, z_c.shape[-1], dtype=x.dtype, device=x.device)
            z_all[start:stop] = z_c
        ids, single = _row_ids(start, stop, M, x.device)
        gated = fns.expand_heads(fns.gate(z_c), feature_width) * _rows_of(state, ids, single).to(z_c.dtype)
        y[start:stop] = F.linear(gated, w_o, b_o)
    return y.view(B, M, -1), state.unsqueeze(1), u_all, z_all


def full_backward(fns, dy, x, c, w_h, b_h, coeff, w_s, b_s, w_o, has_b_o, state, u_all, z_all,
                  context_mask, variant, degree):
    """Backward pass of the full mode; u_all/z_all are the kept projections or None (lean).

    Returns ``(d_x, d_c, d_w_h, d_b_h, d_coeff, d_w_s, d_b_s, d_w_o, d_b_o)``.
    """
    ctx_in = x if c is None else c
    B, N, _ = ctx_in.shape
    M = x.shape[1]
    c2 = ctx_in.reshape(B * N, -1)
    x2 = x.reshape(B * M, -1)
    dy2 = dy.reshape(B * M, -1)
    state2 = state.reshape(B, -1)  # (B, F) float32
    width = state2.shape[-1]
    acc = state2.dtype
    d_w_o = torch.zeros_like(w_o)
    d_b_o = dy2.sum(dim=0) if has_b_o else None
    d_w_s = torch.zeros_like(w_s)
    d_b_s = torch.zeros_like(b_s) if b_s is not None else None
    d_state = torch.zeros(B, width, dtype=acc, device=x.device)
    d_x2 = torch.empty_like(x2)
    # Phase A: the gate side, over query rows.
    step = chunk_rows(width)
    for start in range(0, B * M, step):
        stop = min(start + step, B * M)
        ids, single = _row_ids(start, stop, M, x.device)
        x_c = x2[start:stop]
        z_c = z_all[start:stop] if z_all is not None else F.linear(x_c, w_s, b_s)
        s_c = fns.gate(z_c)
        s_full = fns.expand_heads(s_c, width)
        H_c = _rows_of(state2, ids, single).to(s_c.dtype)
        dy_c = dy2[start:stop]
        d_gated = dy_c @ w_o  # (t, F)
        d_w_o.addmm_(dy_c.t(), s_full * H_c)
        _add_rows(d_state, d_gated * s_full, ids, single)
        d_z = fns.gate_backward(fns.reduce_heads(d_gated.mul_(H_c), s_c.shape[-1]), z_c, s_c)
        torch.mm(d_z, w_s, out=d_x2[start:stop])
        d_w_s.addmm_(d_z.t(), x_c)
        if d_b_s is not None:
            d_b_s += d_z.sum(dim=0)
    # Phase B: the adjoint of the mean, one (B, F) vector.
    w2 = None if context_mask is None else context_mask.reshape(B * N).to(acc)
    count = (torch.full((B, 1), float(N), dtype=acc, device=x.device) if w2 is None
             else w2.view(B, N).sum(dim=1, keepdim=True))
    g = d_state / count.clamp_min(1)  # (B, F)
    # Phase C: the feature side, over context rows.
    d_w_h = torch.zeros_like(w_h)
    d_b_h = torch.zeros_like(b_h) if b_h is not None else None
    d_coeff = torch.zeros(coeff.shape, dtype=acc, device=x.device) if coeff is not None else None
    d_c2 = d_x2 if c is None else torch.empty_like(c2)
    step = chunk_rows(w_h.shape[0])
    for start in range(0, B * N, step):
        stop = min(start + step, B * N)
        ids, single = _row_ids(start, stop, N, x.device)
        c_c = c2[start:stop]
        u_c = u_all[start:stop] if u_all is not None else F.linear(c_c, w_h, b_h)
        dh = _rows_of(g, ids, single).to(u_c.dtype)
        if w2 is not None:
            dh = dh * w2[start:stop].unsqueeze(-1).to(dh.dtype)
        parts, d_coeff_c = fns.feature_backward_parts(variant, u_c, coeff, degree, dh)
        if d_coeff_c is not None:
            d_coeff += d_coeff_c.to(acc)
        row = 0
        d_out = d_c2[start:stop]
        for i, part in enumerate(parts):
            w_part = w_h[row:row + part.shape[-1]]
            if c is None or i > 0:
                d_out.addmm_(part, w_part)
            else:
                torch.mm(part, w_part, out=d_out)
            d_w_h[row:row + part.shape[-1]].addmm_(part.t(), c_c)
            if d_b_h is not None:
                d_b_h[row:row + part.shape[-1]] += part.sum(dim=0)
            row += part.shape[-1]
    d_x = d_x2.view_as(x)
    d_c = None if c is None else d_c2.view_as(c)
    if d_coeff is not None:
        d_coeff = d_coeff.to(coeff.dtype)
    return d_x, d_c, d_w_h, d_b_h, d_coeff, d_w_s, d_b_s, d_w_o, d_b_o

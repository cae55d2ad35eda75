"""Memory-efficient autograd for the whole mixer: projections, features, aggregation, gate.

Plain autograd keeps about six (B, N, F) tensors per mixer for the backward pass (the
projections' outputs, the GELU outputs, running products, the gate, the gated state).
:class:`FusedPolynomialMix` keeps only:

* ``memory="default"``: the inputs and the two projections' outputs ``u = W_h c + b_h``
  and ``z = W_s x + b_s`` (two F-wide tensors), plus the (B, F) state of the full mode;
  the element-wise work is recomputed in the backward pass;
* ``memory="lean"``: the inputs and the (B, F) state only; the projections are
  recomputed too, so the mixer adds no F-wide activation at all.

The backward pass is written out by hand: gradients of the features (product chain rule
or Horner derivative of the power series), of the gates, of the aggregation (its adjoint:
a broadcast, a reversed prefix sum, or a reversed prefix over blocks) and of the
projections. It is tested against plain autograd and the loop reference. The full,
causal and block-causal modes run token-chunked (:mod:`polymixer.ops.chunked`), the
packed and dense modes on whole tensors; the element-wise pieces live in
:mod:`polymixer.ops.elementwise`. :func:`fused_mix` casts to autocast's dtype first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .context import ContextMode, aggregate
from .chunked import segment_backward, segment_forward, segments_of
from .elementwise import expand_heads as _expand_heads
from .elementwise import feature_backward, gate_activation  # noqa: F401 - re-exported
from .elementwise import feature_backward_parts as _feature_backward_parts
from .elementwise import features as _features
from .elementwise import gate as _gate
from .elementwise import gate_backward as _gate_backward
from .elementwise import reduce_heads as _reduce_heads

__all__ = ["FusedPolynomialMix", "fused_mix", "feature_backward", "aggregate_adjoint", "gate_activation"]


def aggregate_adjoint(d_state: torch.Tensor, mode: ContextMode, num_context: int, h_dtype: torch.dtype) -> torch.Tensor:
    """Adjoint of :func:`aggregate`: the gradient w.r.t. the features ``h: (B, N, F)``.

    d_state: gradient w.r.t. the aggregated state, (B, 1, F) in the full mode or
    (B, M, F). The aggregation is linear in h, so this is exact.
    """
    B, F_ = d_state.shape[0], d_state.shape[-1]
    acc = d_state.dtype
    w = None if mode.context_mask is None else mode.context_mask.to(acc)
    if mode.kind == "full":
        count = torch.full((B,), float(num_context), dtype=acc, device=d_state.device) if w is None else w.sum(1)
        g = (d_state.sum(dim=1) / count.clamp_min(1).unsqueeze(-1)).unsqueeze(1)  # (B, 1, F)
        # Without a padding mask every token gets the same gradient: return it unexpanded.
        return g if w is None else g * w.unsqueeze(-1)
    if mode.kind == "causal":
        if w is None:
            count = torch.arange(1, num_context + 1, dtype=acc, device=d_state.device).view(1, -1)
        else:
            count = w.cumsum(dim=1)
        g = d_state / count.clamp_min(1).unsqueeze(-1)
        dh = g.flip(1).cumsum(dim=1).flip(1)
        return dh if w is None else dh * w.unsqueeze(-1)
    if mode.kind == "block":
        ids, nb = mode.block_ids, mode.num_blocks
        ones = torch.ones(1, num_context, dtype=acc, device=d_state.device) if w is None else w
        count = ones.new_zeros((ones.shape[0], nb)).index_add(1, ids, ones).cumsum(dim=1)  # (B or 1, nb)
        block_g = d_state.new_zeros((B, nb, F_)).index_add(1, ids, d_state)
        block_g = block_g / count.clamp_min(1).unsqueeze(-1)
        per_block = block_g.flip(1).cumsum(dim=1).flip(1)
        dh = per_block.index_select(1, ids)
        return dh if w is None else dh * w.unsqueeze(-1)
    # packed and dense: differentiate the (linear) aggregation itself.
    with torch.enable_grad():
        h = torch.zeros(B, num_context, F_, dtype=h_dtype, device=d_state.device, requires_grad=True)
        out = aggregate(h, mode)
        (dh,) = torch.autograd.grad(out, h, d_state.to(out.dtype))
    return dh


def _linear_grads(dout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, need_bias: bool):
    """Gradients of ``out = inp @ weight.T + bias`` w.r.t. inp, weight and bias."""
    d2 = dout.reshape(-1, dout.shape[-1])
    i2 = inp.reshape(-1, inp.shape[-1])
    d_inp = (d2 @ weight).view(inp.shape)
    d_weight = d2.t() @ i2
    d_bias = d2.sum(dim=0) if need_bias else None
    return d_inp, d_weight, d_bias


class FusedPolynomialMix(torch.autograd.Function):
    """The mixer ``y = W_o (s(x) * A(h(c))) + b_o`` with a hand-written backward pass.

    The full (and padding), causal and block-causal modes run token-chunked
    (:mod:`polymixer.ops.chunked`): no F-wide temporary larger than a chunk in either pass
    but the causal mode's per-token states. The packed and dense modes work on whole
    tensors and recompute the per-query states in the backward pass.
    """

    @staticmethod
    def forward(ctx, x, c, w_h, b_h, coeff, w_s, b_s, w_o, b_o, variant, degree, mode, lean):
        self_mix = c is None
        ctx_in = x if self_mix else c
        ctx.variant, ctx.degree, ctx.mode, ctx.lean, ctx.self_mix = variant, degree, mode, lean, self_mix
        ctx.has_b_h, ctx.has_b_o = b_h is not None, b_o is not None
        ctx.num_context = ctx_in.shape[1]
        if mode.kind in ("full", "causal", "block"):
            seg = segments_of(mode, ctx_in.shape[1], x.device)
            keep = (not lean) and any(ctx.needs_input_grad)
            y, state, u_all, z_all = segment_forward(variant, degree, seg, x, c, w_h, b_h, coeff,
                                                     w_s, b_s, w_o, b_o, mode.context_mask, keep)
            # Keep the segment states unless there is about one per token (causal): then
            # they are F-wide and the backward pass recomputes them.
            if 4 * seg.count > ctx_in.shape[1]:
                state = None
            ctx.segments = seg
            ctx.save_for_backward(x, c, w_h, b_h, coeff, w_s, b_s, w_o, u_all, z_all, state)
            return y
        u = F.linear(ctx_in, w_h, b_h)
        z = F.linear(x, w_s, b_s)
        state = aggregate(_features(variant, u, coeff, degree), mode)  # (B, 1 or M, F), float32
        s = _gate(variant, z)
        width = state.shape[-1]
        gated = _expand_heads(s, width) * state.to(s.dtype)
        y = F.linear(gated, w_o, b_o)
        keep_state = None  # per-query (B, M, F) states: recomputed in the backward pass
        if lean:
            ctx.save_for_backward(x, c, w_h, b_h, coeff, w_s, b_s, w_o, None, None, keep_state)
        else:
            ctx.save_for_backward(x, c, w_h, b_h, coeff, w_s, b_s, w_o, u, z, keep_state)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, c, w_h, b_h, coeff, w_s, b_s, w_o, u, z, state = ctx.saved_tensors
        variant, degree, mode = ctx.variant, ctx.degree, ctx.mode
        if mode.kind in ("full", "causal", "block"):
            grads = segment_backward(variant, degree, ctx.segments, dy.contiguous(), x, c, w_h, b_h,
                                     coeff, w_s, b_s, w_o, ctx.has_b_o, state, u, z, mode.context_mask)
            return grads + (None, None, None, None)
        ctx_in = x if ctx.self_mix else c
        if u is None:  # lean: recompute the projections
            u = F.linear(ctx_in, w_h, b_h)
            z = F.linear(x, w_s, b_s)
        if state is None:  # per-query states: recompute from the features
            state = aggregate(_features(variant, u, coeff, degree), mode)
        s = _gate(variant, z)
        width = state.shape[-1]
        heads = s.shape[-1]
        state_c = state.to(s.dtype)
        dy2 = dy.reshape(-1, dy.shape[-1])
        d_gated = (dy2 @ w_o).view(s.shape[:-1] + (width,))
        d_b_o = dy2.sum(dim=0) if ctx.has_b_o else None
        s_full = _expand_heads(s, width)
        gated = s_full * state_c
        d_w_o = dy2.t() @ gated.reshape(-1, width)
        del gated
        d_state = d_gated * s_full
        del s_full
        d_z = _gate_backward(variant, _reduce_heads(d_gated * state_c, heads), z, s)
        del d_gated
        dh_dtype = torch.float32 if u.dtype == torch.float16 else u.dtype
        d_h = aggregate_adjoint(d_state.to(state.dtype), mode, ctx.num_context, dh_dtype).to(dh_dtype)
        del d_state
        du_parts, d_coeff = _feature_backward_parts(variant, u, coeff, degree, d_h)
        del d_h
        d_x, d_w_s, d_b_s = _linear_grads(d_z, x, w_s, b_s is not None)
        # d_ctx = sum_i du_i @ W_h[rows_i]; dW_h[rows_i] = du_i^T c (no concatenation of du)
        c2 = ctx_in.reshape(-1, ctx_in.shape[-1])
        d_ctx2 = None
        w_rows, d_w_rows, d_b_rows = w_h.split([p.shape[-1] for p in du_parts]), [], []
        for part, w_part in zip(du_parts, w_rows):
            p2 = part.reshape(-1, part.shape[-1])
            d_ctx2 = p2 @ w_part if d_ctx2 is None else d_ctx2.addmm_(p2, w_part)
            d_w_rows.append(p2.t() @ c2)
            if ctx.has_b_h:
                d_b_rows.append(p2.sum(dim=0))
        del du_parts
        d_ctx = d_ctx2.view(ctx_in.shape)
        d_w_h = torch.cat(d_w_rows) if len(d_w_rows) > 1 else d_w_rows[0]
        d_b_h = (torch.cat(d_b_rows) if len(d_b_rows) > 1 else d_b_rows[0]) if ctx.has_b_h else None
        if ctx.self_mix:
            d_x = d_x + d_ctx
            d_c = None
        else:
            d_c = d_ctx
        if d_coeff is not None:
            d_coeff = d_coeff.to(coeff.dtype)
        return d_x, d_c, d_w_h, d_b_h, d_coeff, d_w_s, d_b_s, d_w_o, d_b_o, None, None, None, None


def fused_mix(x, context, mixer, mode: ContextMode, lean: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run ``mixer`` (a PolynomialMixer) on ``x`` through :class:`FusedPolynomialMix`.

    dtype: compute dtype (autocast's); the inputs and projection weights are cast to it
    first (differentiably). The power coefficients stay in their own dtype.
    """
    tensors = [x, context, mixer.feature_proj.weight, mixer.feature_proj.bias,
               mixer.gate_proj.weight, mixer.gate_proj.bias, mixer.out_proj.weight, mixer.out_proj.bias]
    if dtype is not None:
        tensors = [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]
    x, context, w_h, b_h, w_s, b_s, w_o, b_o = tensors
    return FusedPolynomialMix.apply(
        x, context, w_h, b_h, mixer.coeff, w_s, b_s, w_o, b_o,
        mixer.variant, mixer.degree, mode, lean,
    )

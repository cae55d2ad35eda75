"""Memory-efficient autograd for the whole mixer: projections, features, aggregation, gate.

Plain autograd keeps about six (B, N, F) tensors per mixer for the backward pass (the
projections' outputs, the GELU outputs, running products, the gate, the gated state).
:class:`FusedPolynomialMix` keeps only:

* form ``"fused"``: the inputs and the two projections' outputs ``u = W_h c + b_h`` and
  ``z = W_s x + b_s`` (two F-wide tensors), plus the (B, segments, F) states of the full
  and block-causal modes; the element-wise work is recomputed in the backward pass;
* form ``"lean"``: the inputs and those states only; the projections are recomputed
  too, so the mixer adds no F-wide activation at all.

The passes themselves, token-chunked, are in :mod:`polymixer.ops.pom.chunked`; the backward
pass is written out by hand and tested against plain autograd and the loop reference. It
is not differentiable again (use the autograd form for double backward).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .chunked import mix_backward, mix_forward
from .chunk_ops import ChunkOps, CompileRecord
from ..plan import ExecutionPlan
from .spec import MixerSpec, MixerWeights

__all__ = ["FusedPolynomialMix", "fused_mix"]


class FusedPolynomialMix(torch.autograd.Function):
    """``y = W_o (s(x) * A(h(c))) + b_o`` with a hand-written backward pass.

    ``apply(x, c, *weights, spec, mode, plan, record, angles, query_angles)``: the weights as the seven entries of
    :class:`~polymixer.ops.pom.spec.MixerWeights` (autograd needs them as arguments); use
    :func:`fused_mix`. What is kept for the backward pass is the plan's
    (``keep_projections``, ``keep_states``), plus the rotary angles if any (not F-wide).
    """

    @staticmethod
    def forward(ctx, x, c, w_h, b_h, coeff, w_s, b_s, w_o, b_o, spec: MixerSpec, mode, plan: ExecutionPlan,
                record: CompileRecord | None, angles=None, query_angles=None):
        weights = MixerWeights(w_h, b_h, coeff, w_s, b_s, w_o, b_o)
        ops = ChunkOps(spec, plan.compiled, x.device.type, x.dtype, plan.eager_functions, record)
        grad = any(ctx.needs_input_grad)  # nothing is kept without a backward pass
        y, state, u, z = mix_forward(mode, x, c, weights, ops, plan.chunk_rows,
                                     keep_projections=plan.keep_projections and grad,
                                     keep_states=plan.keep_states and grad, angles=angles,
                                     query_angles=query_angles)
        ctx.mode, ctx.ops, ctx.chunk_rows = mode, ops, plan.chunk_rows
        # self-mixing passes one angle tensor for both: save it once, so that the backward computes
        # its rotations once even under saved-tensor hooks (which hand back a new object per entry)
        ctx.same_angles = query_angles is angles
        ctx.save_for_backward(x, c, *weights, u, z, state, angles, None if ctx.same_angles else query_angles)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, c, *rest = ctx.saved_tensors
        weights, (u, z, state, angles, query_angles) = MixerWeights(*rest[:7]), rest[7:]
        if ctx.same_angles:
            query_angles = angles
        grads = mix_backward(ctx.mode, dy.contiguous(), x, c, weights, ctx.ops, ctx.chunk_rows,
                             state, u, z, angles, query_angles)
        return grads + (None, None, None, None, None, None)


def fused_mix(x: torch.Tensor, context: torch.Tensor | None, weights: MixerWeights, spec: MixerSpec, mode,
              plan: ExecutionPlan, record: CompileRecord | None = None, angles: torch.Tensor | None = None,
              query_angles: torch.Tensor | None = None) -> torch.Tensor:
    """The mixer's output ``(B, M, D)`` through :class:`FusedPolynomialMix`.

    x: (B, M, D) queries; context: (B, N, D) or None (self-mixing); mode: a
    :class:`~polymixer.ops.context.ContextMode`; plan: an
    :class:`~polymixer.ops.plan.ExecutionPlan` of form ``"fused"`` or ``"lean"``
    (:func:`~polymixer.ops.plan.choose_path`). With ``plan.dtype`` (autocast's), the inputs
    and projection weights are cast to it first (differentiably, so float32 weights get
    float32 gradients) and the pass runs with autocast off; the power coefficients keep
    their dtype, states and sums stay float32. record: where a failed compile is written
    (:class:`~polymixer.ops.pom.chunk_ops.CompileRecord`; default the shared one).
    angles, query_angles: rotary angles of the context tokens and the queries, with the
    query placement ``"state"`` (:mod:`.rotary`; the ``"gate"`` placement runs the autograd
    form).
    """
    if (angles is None) != (query_angles is None):
        raise ValueError("angles, query_angles: rotary positions need both (or neither)")
    if angles is not None and spec.rotary_query != "state":
        raise ValueError(f"spec: the {plan.form} form rotates the state (rotary_query='state'), "
                         f"not {spec.rotary_query!r}")
    if plan.form not in ("fused", "lean"):
        raise ValueError(f"plan: expected the fused or lean form, got {plan.form!r}")
    if plan.dtype is None:
        return FusedPolynomialMix.apply(x, context, *weights, spec, mode, plan, record, angles, query_angles)
    dtype = plan.dtype
    x = x.to(dtype)
    context = None if context is None else context.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return FusedPolynomialMix.apply(x, context, *weights.cast(dtype), spec, mode, plan, record, angles,
                                        query_angles)

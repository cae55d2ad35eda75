"""The naive forms of the mixer: plain PyTorch autograd over whole tensors.

``y = W_o (s(W_s x + b_s) * H) + b_o`` with ``H`` each query's mean of the context
features ``h(W_h c + b_h)`` (:mod:`.maths`). :func:`reference_mix` takes the mean through
the dense (B, M, N) mask of the mode, with loops: slow, obviously right, the oracle of
every other form. :func:`autograd_mix` takes it through the mode's O(N) aggregation: the
form that runs inside ``torch.compile``, with a streaming state, and when asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import ContextMode, aggregate
from ..frame_memory import DecayWeights, FrameMemory, frame_aggregate
from ..reference import reference_aggregate, reference_frame_memory
from .maths import apply_gate, features, gate
from .rotary import rotate, widen_gate
from .spec import MixerSpec, MixerWeights

__all__ = ["context_features", "read_out", "reference_mix", "autograd_mix"]


def context_features(context: torch.Tensor, weights: MixerWeights, spec: MixerSpec,
                     angles: torch.Tensor | None = None) -> torch.Tensor:
    """``h: (B, N, F)`` of context tokens ``(B, N, D)``; with rotary ``angles: (N or B, N,
    F/2)``, each token's features rotated by its own position, ``R_{p_j} h_j``."""
    h = features(spec, F.linear(context, weights.w_h, weights.b_h), weights.coeff)
    return h if angles is None else rotate(h, angles)


def read_out(x: torch.Tensor, H: torch.Tensor, weights: MixerWeights, spec: MixerSpec,
             query_angles: torch.Tensor | None = None) -> torch.Tensor:
    """``W_o (s(W_s x + b_s) * H) + b_o`` for queries ``x: (B, M, D)`` and states ``H: (B, 1 or M, F)``.

    With rotary ``query_angles: (M or B, M, F/2)``: ``W_o (s * R_{-p_i} H) + b_o``
    (``spec.rotary_query == "state"``) or ``W_o ((R_{p_i} s) * H) + b_o`` (``"gate"``,
    a per-head gate widened to F first)."""
    s = gate(spec.variant, F.linear(x, weights.w_s, weights.b_s))
    H = H.to(s.dtype)
    if query_angles is not None:
        if spec.rotary_query == "gate":
            s = rotate(widen_gate(s, H.shape[-1]), query_angles)
        else:
            H = rotate(H, -query_angles)
    return F.linear(apply_gate(s, H), weights.w_o, weights.b_o)


def reference_mix(x: torch.Tensor, context: torch.Tensor, weights: MixerWeights, spec: MixerSpec,
                  mode: ContextMode, angles: torch.Tensor | None = None,
                  query_angles: torch.Tensor | None = None, memory: FrameMemory | None = None,
                  decay: DecayWeights | None = None) -> torch.Tensor:
    """The mixer through the dense mask of ``mode`` (test oracle, O(M*N)); with a frame
    ``memory`` other than the mean, through its explicit weights matrix (O(M*N*F))."""
    h = context_features(context, weights, spec, angles)
    if memory is not None and not memory.is_mean:
        H = reference_frame_memory(h, context, mode, memory, decay, x.shape[1])
    else:
        H = reference_aggregate(h, mode, x.shape[1])
    return read_out(x, H, weights, spec, query_angles)


def autograd_mix(x: torch.Tensor, context: torch.Tensor, weights: MixerWeights, spec: MixerSpec,
                 mode: ContextMode, prefix: tuple | None = None, backend: str = "torch",
                 angles: torch.Tensor | None = None, query_angles: torch.Tensor | None = None,
                 memory: FrameMemory | None = None, decay: DecayWeights | None = None) -> torch.Tensor:
    """The mixer through the O(N) aggregation of ``mode`` (``backend`` ``"torch"`` or
    ``"triton"``); ``prefix = (total (B, F), count (B,))`` a streaming state every query
    also reads (with rotary positions: the sum of rotated features); ``angles`` and
    ``query_angles`` the rotary angles of the context tokens and the queries. ``memory``:
    a frame memory other than the plain mean (:mod:`polymixer.ops.frame_memory`; block-causal
    or full mode, PyTorch aggregation), with its learned ``decay`` and ``prefix`` its state."""
    h = context_features(context, weights, spec, angles)
    if memory is not None and not memory.is_mean:
        H, _ = frame_aggregate(h, context, mode, memory, decay, prefix)
    else:
        H = aggregate(h, mode, prefix, backend=backend)
    return read_out(x, H, weights, spec, query_angles)

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
from ..reference import reference_aggregate
from .maths import apply_gate, features, gate
from .spec import MixerSpec, MixerWeights

__all__ = ["context_features", "read_out", "reference_mix", "autograd_mix"]


def context_features(context: torch.Tensor, weights: MixerWeights, spec: MixerSpec) -> torch.Tensor:
    """``h: (B, N, F)`` of context tokens ``(B, N, D)``."""
    return features(spec, F.linear(context, weights.w_h, weights.b_h), weights.coeff)


def read_out(x: torch.Tensor, H: torch.Tensor, weights: MixerWeights, spec: MixerSpec) -> torch.Tensor:
    """``W_o (s(W_s x + b_s) * H) + b_o`` for queries ``x: (B, M, D)`` and states ``H: (B, 1 or M, F)``."""
    s = gate(spec.variant, F.linear(x, weights.w_s, weights.b_s))
    return F.linear(apply_gate(s, H.to(s.dtype)), weights.w_o, weights.b_o)


def reference_mix(x: torch.Tensor, context: torch.Tensor, weights: MixerWeights, spec: MixerSpec,
                  mode: ContextMode) -> torch.Tensor:
    """The mixer through the dense mask of ``mode`` (test oracle, O(M*N))."""
    return read_out(x, reference_aggregate(context_features(context, weights, spec), mode, x.shape[1]), weights, spec)


def autograd_mix(x: torch.Tensor, context: torch.Tensor, weights: MixerWeights, spec: MixerSpec,
                 mode: ContextMode, prefix: tuple | None = None, backend: str = "torch") -> torch.Tensor:
    """The mixer through the O(N) aggregation of ``mode`` (``backend`` ``"torch"`` or
    ``"triton"``); ``prefix = (total (B, F), count (B,))`` a streaming state every query
    also reads."""
    H = aggregate(context_features(context, weights, spec), mode, prefix, backend=backend)
    return read_out(x, H, weights, spec)

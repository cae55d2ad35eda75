"""What the mixer's tensor functions need to know about a mixer: its static shape
(:class:`MixerSpec`) and its weights (:class:`MixerWeights`), so that :mod:`polymixer.ops`
never sees a module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MixerSpec", "MixerWeights"]


class MixerSpec(NamedTuple):
    """The static description of a mixer (docs/design.md, section 1).

    variant: ``"product"`` or ``"power"``; degree: k; heads: 1 for a gate of width F,
    G > 1 for one gate scalar per head, broadcast over F/G consecutive channels;
    rotary_query: where a query's rotary position enters when positions are given,
    ``"state"`` (the mean rotated back) or ``"gate"`` (the gate rotated), see
    :mod:`.rotary`.
    """

    variant: str
    degree: int
    heads: int = 1
    rotary_query: str = "state"


class MixerWeights(NamedTuple):
    """The weights of a mixer, ``y = W_o (s(W_s x + b_s) * A(h(W_h c + b_h))) + b_o``.

    w_h: (W, D) feature projection (W = F for product, e*D for power), b_h: (W,) or None;
    coeff: (e*D, k) power-series coefficients (power) or None; w_s: (G, D) gate projection,
    b_s: (G,) or None; w_o: (D, F) output projection, b_o: (D,) or None.
    """

    w_h: torch.Tensor
    b_h: torch.Tensor | None
    coeff: torch.Tensor | None
    w_s: torch.Tensor
    b_s: torch.Tensor | None
    w_o: torch.Tensor
    b_o: torch.Tensor | None

    def cast(self, dtype: torch.dtype | None) -> "MixerWeights":
        """The projection weights in ``dtype`` (differentiable casts); coeff keeps its dtype."""
        if dtype is None:
            return self
        return MixerWeights(*(t if t is None or name == "coeff" or t.dtype == dtype else t.to(dtype)
                              for name, t in zip(self._fields, self)))

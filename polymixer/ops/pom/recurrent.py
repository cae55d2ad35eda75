"""The recurrent form of the mixer: one block of a stream, state in, state out
(docs/design.md, section 3).

The state of the tokens seen so far is their feature sum ``total: (B, F)`` and count
``count: (B,)``. Every token of a new block reads ``(total + block sum) / (count + t)``; the
new state adds the block. Feeding a sequence block by block equals the block-causal
parallel form (tested for every block size, in float64 to 1e-12). With rotary positions
the state is the sum of the rotated features and the block's own ``angles`` rotate its
features and its queries' read-out, so the same holds.
"""

from __future__ import annotations

import torch

from ..aggregation import stream_block
from .naive import context_features, read_out
from .spec import MixerSpec, MixerWeights

__all__ = ["recurrent_step"]


def recurrent_step(x: torch.Tensor, weights: MixerWeights, spec: MixerSpec, total: torch.Tensor,
                   count: torch.Tensor, context_mask: torch.Tensor | None = None,
                   angles: torch.Tensor | None = None):
    """Feed the block ``x: (B, t, D)``; ``context_mask: (B, t)`` leaves padded tokens out of
    the state; ``angles: (t or B, t, F/2)`` the rotary angles of the block's tokens.
    Returns ``(y (B, t, D), new_total, new_count)``; the inputs are not changed."""
    H, total, count = stream_block(context_features(x, weights, spec, angles), context_mask, total, count)
    return read_out(x, H, weights, spec, angles), total, count

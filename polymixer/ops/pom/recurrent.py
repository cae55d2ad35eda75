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
from ..context import Full
from ..frame_memory import DecayWeights, FrameMemory, frame_aggregate
from .naive import context_features, read_out
from .spec import MixerSpec, MixerWeights

__all__ = ["recurrent_step"]


def recurrent_step(x: torch.Tensor, weights: MixerWeights, spec: MixerSpec, total: torch.Tensor,
                   count: torch.Tensor, context_mask: torch.Tensor | None = None,
                   angles: torch.Tensor | None = None, memory: FrameMemory | None = None,
                   decay: DecayWeights | None = None):
    """Feed the block ``x: (B, t, D)``; ``context_mask: (B, t)`` leaves padded tokens out of
    the state; ``angles: (t or B, t, F/2)`` the rotary angles of the block's tokens.
    ``memory``: a frame memory other than the plain mean, the block being one frame, with
    its learned ``decay``; ``(total, count)`` is then its state
    (:func:`~polymixer.ops.frame_memory.frame_memory_scan`).
    Returns ``(y (B, t, D), new_total, new_count)``; the inputs are not changed."""
    h = context_features(x, weights, spec, angles)
    if memory is not None and not memory.is_mean:
        H, (total, count) = frame_aggregate(h, x, Full(context_mask=context_mask), memory, decay, (total, count))
    else:
        H, total, count = stream_block(h, context_mask, total, count)
    return read_out(x, H, weights, spec, angles), total, count

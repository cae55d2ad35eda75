"""Cross-frame memory of a block-causal mixer: what a frame reads of the frames before it
(docs/design.md, section 8).

In the block-causal mode with one block per frame, frame f reads a mean over the context
features of frames g <= f. With per-frame feature sums ``Σ_g: (B, F)`` and token counts
``n_g`` the options are:

* ``"mean"``: ``H_f = Σ_{g<=f} Σ_g / Σ_{g<=f} n_g`` (the plain block-causal mean, done by
  :mod:`polymixer.ops.aggregation`; not by this module);
* ``"decay"``: a learned decay per channel ``γ = sigmoid(logit)`` in (0, 1):
  ``H_f = Σ_{g<=f} γ^{f-g} Σ_g / Σ_{g<=f} γ^{f-g} n_g``, per channel (the count is decayed
  with the same γ, so the normaliser is (B, F));
* ``"gated-decay"``: the decay depends on the frame being added,
  ``γ_f = sigmoid(W_γ x̄_f + b_γ)`` (``x̄_f`` the mean of frame f's input tokens), and the
  recurrence ``S_f = γ_f S_{f-1} + Σ_f``, ``N_f = γ_f N_{f-1} + n_f``, ``H_f = S_f / N_f``
  ("decay" is the case ``W_γ = 0``);
* ``"window:W"``: the plain mean over the last W frames (the current one included),
  ``H_f = Σ_{f-W<g<=f} Σ_g / Σ_{f-W<g<=f} n_g``.

Every option is O(N) over the tokens (the work here is on (B, frames, F) sums), has a
constant-size streaming state, and the same function (:func:`frame_memory_scan`) runs the
parallel form over all frames and one step of a stream, so frame by frame equals the
parallel form:

* decay: ``(S (B, F), N (B, F))``, updated ``S <- γ S + Σ_f``, ``N <- γ N + n_f``;
* window: the W most recent frame sums and counts, ``(B, W, F)`` and ``(B, W)``; the
  oldest leaves as a new frame comes in. Each window is summed from its W frame sums (no
  running total minus the frame that leaves, so nothing cancels and nothing drifts).

An empty context set (every token padded) gives a zero state, never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import aggregation as agg

__all__ = ["FRAME_MEMORIES", "FrameMemory", "DecayWeights", "parse_frame_memory", "frame_decay",
           "frame_memory_scan", "frame_aggregate", "check_frame_memory_mode", "initial_decay_logit"]

#: The option strings (``"window:W"`` with W a positive int).
FRAME_MEMORIES = ("mean", "decay", "gated-decay", "window:W")

#: The decay a new "decay"/"gated-decay" mixer starts with.
INITIAL_DECAY = 0.9


def initial_decay_logit(decay: float = INITIAL_DECAY) -> float:
    """``logit(decay)``: the bias that makes ``sigmoid`` start at ``decay``."""
    return math.log(decay / (1.0 - decay))


@dataclass(frozen=True)
class FrameMemory:
    """A parsed ``frame_memory`` option: ``kind`` ``"mean"``, ``"decay"``, ``"gated-decay"``
    or ``"window"``, and ``window`` (W) for the last."""

    kind: str
    window: int | None = None

    def __str__(self) -> str:
        return f"window:{self.window}" if self.kind == "window" else self.kind

    @property
    def is_mean(self) -> bool:
        return self.kind == "mean"

    @property
    def decays(self) -> bool:
        """Whether it has a learned decay (``"decay"``, ``"gated-decay"``)."""
        return self.kind in ("decay", "gated-decay")


def parse_frame_memory(value) -> FrameMemory:
    """The :class:`FrameMemory` of an option string (see :data:`FRAME_MEMORIES`); raises
    ValueError naming ``frame_memory`` for anything else."""
    if isinstance(value, FrameMemory):
        return value
    if isinstance(value, str):
        if value in ("mean", "decay", "gated-decay"):
            return FrameMemory(value)
        if value.startswith("window:"):
            size = value[len("window:"):]
            if size.isdigit() and int(size) >= 1:
                return FrameMemory("window", int(size))
    raise ValueError(f"frame_memory: expected 'mean', 'decay', 'gated-decay' or 'window:W' with W a positive "
                     f"int (e.g. 'window:4'), got {value!r}")


class DecayWeights(NamedTuple):
    """The learned decay: ``γ_f = sigmoid(weight · x̄_f + bias)``, ``bias: (F,)`` (the
    logit of "decay"), ``weight: (F, D)`` ("gated-decay") or None ("decay")."""

    bias: torch.Tensor
    weight: torch.Tensor | None = None


def check_frame_memory_mode(memory: FrameMemory, mode) -> None:
    """Raise ValueError unless ``mode`` (a :class:`~polymixer.ops.context.ContextMode`) has
    frames for ``memory``: the block-causal mode (one block per frame), or the full mode
    (one frame). The plain mean works in every mode."""
    if memory.is_mean or mode.kind in ("block", "full"):
        return
    raise ValueError(f"frame_memory={str(memory)!r} needs frames: the block-causal mode (block_size=T, one block "
                     f"per frame) or the full mode (one frame); got the {mode.kind} context mode (use "
                     f"frame_memory='mean' there)")


def frame_decay(decay: DecayWeights, context: torch.Tensor, seg: agg.Segments, weights: torch.Tensor | None,
                counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """γ of each frame in ``dtype``: ``(1, 1, F)`` for "decay" (one γ for every frame),
    ``(B, G, F)`` for "gated-decay" (from the mean of each frame's tokens of ``context: (B,
    N, D)``; ``weights: (B, N)`` 0/1 padding weights or None, ``counts: (B or 1, G)`` the
    frames' token counts). Outside autocast: a decay is a float32 (float64) quantity."""
    with torch.autocast(context.device.type, enabled=False):
        bias = decay.bias.to(dtype)
        if decay.weight is None:
            return torch.sigmoid(bias).view(1, 1, -1)
        x = context.to(dtype)
        if weights is not None:
            x = x * weights.unsqueeze(-1)
        frame_mean = seg.sums(x) / counts.clamp_min(1).unsqueeze(-1)  # (B, G, D)
        return torch.sigmoid(F.linear(frame_mean, decay.weight.to(dtype), bias))


def _divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` (count broadcast against total) with a zero count giving 0."""
    return total / torch.where(count > 0, count, torch.ones((), dtype=count.dtype, device=count.device))


def frame_memory_scan(memory: FrameMemory, total: torch.Tensor, count: torch.Tensor,
                      decay: torch.Tensor | None = None, state: tuple | None = None):
    """The state each frame reads, from per-frame sums, and the streaming state after them.

    total: (B, G, F) feature sums of G consecutive frames; count: (B or 1, G) their token
    counts; decay: γ per frame, (1 or B, 1 or G, F) (decay options); state: the frames
    before, ``(S (B, F), N (B, F))`` (decay) or ``(sums (B, W, F), counts (B, W))``
    (window), or None (no frame before), in the state's dtype (float32, float64 for a
    float64 stream). Returns ``(H (B, G, F), new_state)``: H in total's dtype, the new
    state in the given state's dtype (total's without one).
    """
    B, G, width = total.shape
    count = count.to(total.dtype).expand(B, G)
    state_dtype = total.dtype if state is None else state[0].dtype
    if memory.decays:
        if decay is None:
            raise ValueError(f"decay: frame_memory={str(memory)!r} needs the decay of each frame")
        if state is None:
            S = total.new_zeros(B, width)
            N = total.new_zeros(B, width)
        else:
            S, N = state[0].to(total.dtype), state[1].to(total.dtype)
        outs = []
        for g in range(G):  # a handful of frames: a loop of (B, F) updates, nothing next to the tokens
            gamma = decay[:, min(g, decay.shape[1] - 1)]
            S = gamma * S + total[:, g]
            N = gamma * N + count[:, g, None]
            outs.append(_divide(S, N))
        return torch.stack(outs, dim=1), (S.to(state_dtype), N.to(state_dtype))
    if memory.kind == "window":
        W = memory.window
        if state is None:
            past_t, past_c = total.new_zeros(B, W, width), total.new_zeros(B, W)
        else:
            past_t, past_c = state[0].to(total.dtype), state[1].to(total.dtype)
        ext_t = torch.cat([past_t, total], dim=1)  # (B, W + G, F): the W frames before, then these
        ext_c = torch.cat([past_c, count], dim=1)
        # window of frame f: the W frame sums ending at f, summed (no cancellation)
        win_t = ext_t[:, 1:].unfold(1, W, 1).sum(-1)  # (B, G, F)
        win_c = ext_c[:, 1:].unfold(1, W, 1).sum(-1)  # (B, G)
        return (_divide(win_t, win_c.unsqueeze(-1)),
                (ext_t[:, -W:].to(state_dtype), ext_c[:, -W:].to(state_dtype)))
    raise ValueError(f"frame_memory: {str(memory)!r} is the plain mean, aggregated by the context mode")


def frame_aggregate(h: torch.Tensor, context: torch.Tensor, mode, memory: FrameMemory,
                    decay: DecayWeights | None = None, state: tuple | None = None):
    """The state each query reads under a frame memory, and the streaming state after it.

    h: (B, N, F) context features; context: (B, N, D) the context tokens (the input of the
    gated decay); mode: block-causal (one block per frame) or full (one frame; a stream's
    step); decay: the learned decay (decay options); state: as in
    :func:`frame_memory_scan`. Returns ``(H, new_state)``: H (B, N, F), or (B, 1, F) in the
    full mode, in the accumulation dtype.
    """
    check_frame_memory_mode(memory, mode)
    seg = mode.segments(h.shape[1])
    hw, w = agg._masked(h, mode.context_mask)
    count = agg.segment_counts(seg, w, h.shape[1], hw.dtype, h.device)
    gamma = frame_decay(decay, context, seg, w, count, hw.dtype) if memory.decays else None
    H, new_state = frame_memory_scan(memory, seg.sums(hw), count, gamma, state)
    return seg.read(H), new_state

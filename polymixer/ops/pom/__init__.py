"""The Polynomial Mixer as tensor functions, in the layout of flash-linear-attention:

* :mod:`.maths`: the paper's per-token equations (features, gate); :mod:`.derivatives`
  their derivatives; :mod:`.spec` the static description and the weights;
* :mod:`.naive`: plain autograd, and the dense-mask oracle;
* :mod:`.chunked` (passes), :mod:`.chunk_ops` (their element-wise work, eager or
  compiled) and :mod:`.fused` (the autograd Function): the memory-lean forms with a
  hand-written backward (``"fused"``, ``"lean"``);
* :mod:`.recurrent`: one block of a stream, state in, state out;
* :mod:`.rotary`: rotary positions (rotate each context token's features before the
  mean; the query's position at the read-out), autograd and recurrent forms;
* the Triton aggregation kernels are in :mod:`polymixer.ops.triton`.

:func:`mix` and :func:`step` are the entry points; the :class:`~polymixer.ops.plan.ExecutionPlan`
(:func:`~polymixer.ops.plan.choose_path`) says which form runs.
"""

from __future__ import annotations

import torch

from ..context import ContextMode
from ..frame_memory import DecayWeights, FrameMemory
from ..plan import ExecutionPlan
from .chunk_ops import CompileRecord
from .fused import fused_mix
from .maths import apply_gate, features, gate, power_activation, power_features, product_features
from .naive import autograd_mix, context_features, read_out, reference_mix
from .recurrent import recurrent_step
from .rotary import rotary_angles, rotary_layout, rotate
from .spec import MixerSpec, MixerWeights

__all__ = ["mix", "step", "MixerSpec", "MixerWeights", "features", "gate", "apply_gate", "product_features",
           "power_activation", "power_features", "context_features", "read_out", "reference_mix", "autograd_mix",
           "recurrent_step", "fused_mix", "rotate", "rotary_angles", "rotary_layout"]


def mix(x: torch.Tensor, context: torch.Tensor | None, weights: MixerWeights, spec: MixerSpec, mode: ContextMode,
        plan: ExecutionPlan, prefix: tuple | None = None, angles: torch.Tensor | None = None,
        query_angles: torch.Tensor | None = None, memory: FrameMemory | None = None,
        decay: DecayWeights | None = None, record: CompileRecord | None = None) -> torch.Tensor:
    """The mixer's output ``(B, M, D)`` for queries ``x: (B, M, D)`` and ``context: (B, N, D)``
    (None: self-mixing) in ``mode``, by the form ``plan`` names; ``prefix = (total, count)``
    a streaming state every query also reads, ``angles``/``query_angles`` rotary angles of
    the context tokens and the queries (:mod:`.rotary`; the fused and lean forms take the
    query placement ``"state"`` only); ``memory``
    and ``decay`` a frame memory other than the mean (:mod:`polymixer.ops.frame_memory`;
    autograd form only); ``record`` where the fused and lean forms write a failed compile
    (:class:`~.chunk_ops.CompileRecord`, default the shared one)."""
    if plan.form != "autograd":
        if prefix is not None:
            raise ValueError(f"plan: the {plan.form} form takes no streaming state")
        if memory is not None and not memory.is_mean:
            raise ValueError(f"plan: the {plan.form} form has no frame memory but the mean, got {str(memory)!r}")
        return fused_mix(x, context, weights, spec, mode, plan, record, angles, query_angles)
    return autograd_mix(x, x if context is None else context, weights, spec, mode, prefix,
                        backend=plan.aggregation_backend, angles=angles, query_angles=query_angles,
                        memory=memory, decay=decay)


def step(x: torch.Tensor, weights: MixerWeights, spec: MixerSpec, plan: ExecutionPlan, total: torch.Tensor,
         count: torch.Tensor, context_mask: torch.Tensor | None = None, angles: torch.Tensor | None = None,
         memory: FrameMemory | None = None, decay: DecayWeights | None = None):
    """One block ``x: (B, t, D)`` of a stream: ``(y, new_total, new_count)``
    (:func:`~.recurrent.recurrent_step`; ``angles`` the block's rotary angles, ``memory``
    and ``decay`` a frame memory other than the mean, the block one frame); ``plan``
    must be the autograd form (what :func:`~polymixer.ops.plan.choose_path` gives for a
    streaming call)."""
    if plan.form != "autograd":
        raise ValueError(f"plan: a stream runs the autograd form, not {plan.form!r}")
    return recurrent_step(x, weights, spec, total, count, context_mask, angles, memory, decay)

"""What every token mixer provides, so that models ask instead of comparing names.

A token mixer is an ``nn.Module`` called as ``mixer(x, **mode)`` with ``x: (B, N, D)`` and
a context mode given as keyword arguments (none: every token reads every token;
``block_size=T``: block-causal with blocks of T tokens, one frame each in a video model;
``causal``, ``context_mask``, ... where the mixer supports them), returning ``(B, N, D)``.

A mixer that can *stream* (generate a sequence block after block, reading a summary of the
blocks before) also provides:

``init_state(batch_size, device=None, dtype=None) -> state``
    the state of a stream that has seen nothing yet;
``step(x, state) -> (y, new_state)``
    feed the next block ``x: (B, t, D)``: every token of the block reads the state and the
    whole block (the block-causal rule), and ``new_state`` also holds the block. ``state``
    is not changed; feeding a sequence block by block equals ``mixer(x, block_size=t)``.
``constant_state`` (bool attribute)
    True when the size of a state does not depend on how many tokens it has seen (PoM's
    sum and count); False for a state that grows (attention's key-value cache).

A state is an object with ``to(device=, dtype=)``, ``clone()``, ``detach()``,
``state_dict()`` and ``nbytes()`` (:class:`~polymixer.nn.MixerState`,
:class:`~polymixer.nn.KVCache`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["TokenMixer", "StreamingMixer", "can_stream", "has_constant_state", "num_parameters"]


@runtime_checkable
class TokenMixer(Protocol):
    """``mixer(x: (B, N, D), **mode) -> (B, N, D)``."""

    def __call__(self, x: torch.Tensor, **mode: Any) -> torch.Tensor: ...


@runtime_checkable
class StreamingMixer(TokenMixer, Protocol):
    """A token mixer with a state: see the module docstring."""

    constant_state: bool

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> Any: ...

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


def can_stream(mixer: nn.Module) -> bool:
    """Whether ``mixer`` can carry a state: it has ``init_state`` and ``step`` (and does not
    say otherwise with ``streams = False``, as a hybrid of a non-streaming member does)."""
    return (callable(getattr(mixer, "init_state", None)) and callable(getattr(mixer, "step", None))
            and getattr(mixer, "streams", True) is not False)


def has_constant_state(mixer: nn.Module) -> bool:
    """Whether ``mixer`` streams with a state whose size does not grow with the tokens seen."""
    return can_stream(mixer) and bool(getattr(mixer, "constant_state", False))


def num_parameters(module: nn.Module) -> int:
    """The number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())

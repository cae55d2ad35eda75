"""Explicit streaming state of a Polynomial Mixer (docs/design.md, section 3), and the states
of a whole network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

__all__ = ["MixerState", "FrameMemoryState", "StateCache"]


@dataclass
class MixerState:
    """The state of one mixer after it has seen some tokens of B sequences.

    ``total: (B, F)`` sum of the features of every token seen, and ``count: (B,)``
    number of tokens seen, both float32 (float64 for a float64 mixer, see
    :meth:`PolynomialMixer.init_state`). The state read by new tokens is
    ``total / count``; its size does not depend on how many tokens were seen.
    """

    total: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, batch_size: int, width: int, device=None, dtype: torch.dtype = torch.float32) -> "MixerState":
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        return cls(
            torch.zeros(batch_size, width, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.total.shape[0]

    @property
    def width(self) -> int:
        return self.total.shape[1]

    @property
    def device(self) -> torch.device:
        return self.total.device

    def mean(self) -> torch.Tensor:
        """(B, F): the mean of the features seen so far (zeros where nothing was seen)."""
        return self.total / self.count.clamp_min(1).unsqueeze(-1)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "MixerState":
        """A copy on another device (the dtype stays unless given)."""
        return MixerState(self.total.to(device=device, dtype=dtype), self.count.to(device=device, dtype=dtype))

    def clone(self) -> "MixerState":
        return MixerState(self.total.clone(), self.count.clone())

    def detach(self) -> "MixerState":
        return MixerState(self.total.detach(), self.count.detach())

    def reset_(self, rows: torch.Tensor | None = None) -> "MixerState":
        """Forget what was seen, in place: all rows, or the rows where ``rows`` (B,) is True."""
        if rows is None:
            self.total.zero_()
            self.count.zero_()
        else:
            rows = rows.to(self.device).bool()
            self.total.masked_fill_(rows.unsqueeze(-1), 0.0)
            self.count.masked_fill_(rows, 0.0)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "MixerState":
        missing = {"total", "count"} - set(state)
        if missing:
            raise ValueError(f"state: missing keys {sorted(missing)}")
        total, count = state["total"], state["count"]
        if total.dim() != 2 or count.dim() != 1 or count.shape[0] != total.shape[0]:
            raise ValueError(
                f"state: expected total (B, F) and count (B,), got {tuple(total.shape)} and {tuple(count.shape)}"
            )
        return cls(total, count)

    def nbytes(self) -> int:
        return self.total.numel() * self.total.element_size() + self.count.numel() * self.count.element_size()


@dataclass
class FrameMemoryState:
    """The state of a mixer with a frame memory other than the mean
    (``PolynomialMixer(frame_memory=...)``, :mod:`polymixer.ops.frame_memory`), after some
    frames of B sequences; its size does not depend on the frames seen.

    ``"decay"``, ``"gated-decay"``: ``total: (B, F)`` the decayed feature sum
    ``S = Σ_g γ^(f-g) Σ_g`` and ``count: (B, F)`` the decayed token count, per channel.
    ``"window:W"``: ``total: (B, W, F)`` and ``count: (B, W)`` the feature sums and token
    counts of the W most recent frames, oldest first (zeros before the stream's start).
    Float32 (float64 for a float64 mixer).
    """

    total: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, batch_size: int, width: int, window: int | None = None, device=None,
              dtype: torch.dtype = torch.float32) -> "FrameMemoryState":
        """An empty state: a decay state (``window`` None) or that of a window of W frames."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if window is None:
            return cls(torch.zeros(batch_size, width, device=device, dtype=dtype),
                       torch.zeros(batch_size, width, device=device, dtype=dtype))
        return cls(torch.zeros(batch_size, window, width, device=device, dtype=dtype),
                   torch.zeros(batch_size, window, device=device, dtype=dtype))

    @property
    def window(self) -> int | None:
        """W for a window state, None for a decay state."""
        return self.total.shape[1] if self.total.dim() == 3 else None

    @property
    def batch_size(self) -> int:
        return self.total.shape[0]

    @property
    def width(self) -> int:
        return self.total.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.total.device

    def to(self, device=None, dtype: torch.dtype | None = None) -> "FrameMemoryState":
        return FrameMemoryState(self.total.to(device=device, dtype=dtype), self.count.to(device=device, dtype=dtype))

    def clone(self) -> "FrameMemoryState":
        return FrameMemoryState(self.total.clone(), self.count.clone())

    def detach(self) -> "FrameMemoryState":
        return FrameMemoryState(self.total.detach(), self.count.detach())

    def reset_(self, rows: torch.Tensor | None = None) -> "FrameMemoryState":
        """Forget what was seen, in place: all rows, or the rows where ``rows`` (B,) is True."""
        if rows is None:
            self.total.zero_()
            self.count.zero_()
        else:
            rows = rows.to(self.device).bool()
            self.total.masked_fill_(rows.view(-1, *[1] * (self.total.dim() - 1)), 0.0)
            self.count.masked_fill_(rows.view(-1, *[1] * (self.count.dim() - 1)), 0.0)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "FrameMemoryState":
        missing = {"total", "count"} - set(state)
        if missing:
            raise ValueError(f"state: missing keys {sorted(missing)}")
        total, count = state["total"], state["count"]
        decay = total.dim() == 2 and count.shape == total.shape
        window = total.dim() == 3 and count.shape == total.shape[:2]
        if not (decay or window):
            raise ValueError(f"state: expected total (B, F) and count (B, F) (decay) or total (B, W, F) and count "
                             f"(B, W) (window), got {tuple(total.shape)} and {tuple(count.shape)}")
        return cls(total, count)

    def nbytes(self) -> int:
        return self.total.numel() * self.total.element_size() + self.count.numel() * self.count.element_size()


class StateCache:
    """The streaming states of a network: one state per streaming module, keyed by name.

    A value is any state of the token-mixer protocol (:class:`MixerState`,
    :class:`~polymixer.nn.KVCache`, ...). Models treat a cache as a value: a step returns a
    new cache and leaves the one it read unchanged (``VideoDiT.step``).
    ``StateCache.for_model(model, batch_size)`` makes empty states for every outermost
    module of ``model`` that has ``init_state`` and ``step`` (every mixer of a plain network),
    each in the dtype its module chooses unless ``dtype`` is given.
    """

    def __init__(self, states: dict | None = None):
        self.states: dict = dict(states or {})

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, device=None, dtype: torch.dtype | None = None) -> "StateCache":
        states = {}
        for name, module in model.named_modules():
            if any(name.startswith(f"{outer}.") for outer in states):
                continue  # inside a module that already streams
            if callable(getattr(module, "init_state", None)) and callable(getattr(module, "step", None)):
                kwargs = {} if dtype is None else {"dtype": dtype}
                states[name] = module.init_state(batch_size, device=device, **kwargs)
        if not states:
            raise ValueError(f"model: {type(model).__name__} has no mixer with a streaming state")
        return cls(states)

    def __getitem__(self, name: str):
        return self.states[name]

    def __setitem__(self, name: str, state) -> None:
        self.states[name] = state

    def __contains__(self, name: str) -> bool:
        return name in self.states

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[str]:
        return iter(self.states)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "StateCache":
        return StateCache({k: v.to(device=device, dtype=dtype) for k, v in self.states.items()})

    def clone(self) -> "StateCache":
        return StateCache({k: v.clone() for k, v in self.states.items()})

    def detach(self) -> "StateCache":
        return StateCache({k: v.detach() for k, v in self.states.items()})

    def reset_(self) -> "StateCache":
        for state in self.states.values():
            state.reset_()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, state in self.states.items():
            for key, value in state.state_dict().items():
                out[f"{name}.{key}"] = value
        return out

    @classmethod
    def from_state_dict(cls, flat: dict[str, torch.Tensor], like: "StateCache | None" = None) -> "StateCache":
        """The cache of :meth:`state_dict`.

        ``like``: a cache of the same model (e.g. ``model.init_state(B)``) whose entries give
        each state's kind; needed for anything but PoM's own states (a hybrid block's
        members, attention's key-value cache, the frame before, a video model's last
        inputs). Without it, every entry is read as a :class:`MixerState`, or a
        :class:`FrameMemoryState` where the count is not one number per sequence."""
        if like is not None:
            if not isinstance(like, StateCache):
                raise TypeError(f"like: expected a StateCache, got {type(like).__name__}")
            extra = sorted(key for key in flat if not any(key.startswith(f"{name}.") for name in like))
            if extra:
                raise ValueError(f"state: entries {extra} are not in the given cache's {sorted(like)}")
            return cls({name: _rebuild(template, _children(flat, name)) for name, template in like.items()})
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            name, _, leaf = key.rpartition(".")
            grouped.setdefault(name, {})[leaf] = value
        if any(set(d) - {"total", "count"} for d in grouped.values()):
            raise ValueError("state: not only PoM states (total, count); pass like=model.init_state(batch_size), "
                             "a cache of the same model, to rebuild the others")
        return cls({name: (FrameMemoryState if "count" in d and d["count"].dim() == 2 else MixerState
                           ).from_state_dict(d) for name, d in grouped.items()})

    def items(self):
        return self.states.items()

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.states.values())


def _children(flat: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The entries of ``flat`` under ``name.``, with that prefix taken off."""
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in flat.items() if key.startswith(prefix)}


def _rebuild(template, flat: dict[str, torch.Tensor]):
    """A state of ``template``'s kind from its :meth:`state_dict` ``flat``: composite states
    (``members``: a hybrid block's, one per member, ``None`` for a member that keeps none)
    rebuild each part; the others by their class's ``from_state_dict``."""
    members = getattr(template, "states", None)
    if isinstance(members, tuple):
        return type(template)(tuple(None if m is None else _rebuild(m, _children(flat, str(i)))
                                    for i, m in enumerate(members)))
    rebuild = getattr(type(template), "from_state_dict", None)
    if rebuild is None:
        raise TypeError(f"state: a {type(template).__name__} cannot be rebuilt from a state dict")
    return rebuild(flat)

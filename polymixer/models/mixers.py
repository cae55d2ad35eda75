"""The token mixers a model config can name, and the per-layer mixer pattern.

A config's ``mixer`` field is a *pattern*: comma-separated entries, one per block, repeated
over the depth when shorter. Each entry is the name of a registered mixer, optionally
prefixed by ``frame-local``: such a block mixes inside each frame only (in a video model;
in an image model the whole image is one frame), so it keeps no state across frames. An
entry may also be a *hybrid*, mixers joined by ``+`` whose outputs are summed
(:class:`MixerSum`), each member frame-local or not.

    "pom"                            every block PoM (a one-entry pattern)
    "attention"                      every block attention
    "frame-local pom, pom"           blocks 0, 2, 4, ... mix inside each frame, the others across frames
    "pom + frame-local attention"    every block: PoM across frames plus softmax inside the frame
    "pom + conv"                     every block: PoM plus a 3x3 depthwise convolution over the
                                     token grid of each frame, identity at start (DiG-style)
    "pom + local-attention"          every block: PoM plus softmax attention of each token to the
                                     5x5 tokens around it in its own frame (neighbourhood attention)
    "pom + spacetime-local"          every block: PoM plus one softmax over the 5x5 tokens around
                                     each token in its frame and in the frame before (video;
                                     constant state: the last frame's keys and values)

A mixer is registered with a builder that makes it for a model config::

    @register_mixer("my-mixer")
    def build(config):            # a TransformerConfig
        return MyMixer(config.width)

and is then usable in every model, the command line and saved configs. The mixer itself
follows the token-mixer protocol (:mod:`polymixer.nn.protocol`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..nn import MultiHeadAttention, PolynomialMixer
from ..nn.protocol import can_stream

__all__ = ["register_mixer", "registered_mixers", "build_mixer", "LayerMixer", "parse_mixer_pattern",
           "mixer_names", "legacy_frame_local_pattern", "FRAME_LOCAL", "MixerSum", "StateTuple", "frame_local_call",
           "GridConv", "NeighbourhoodAttention", "NoState", "SpacetimeNeighbourhoodAttention", "PreviousFrame"]

FRAME_LOCAL = "frame-local"
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str) -> Callable:
    """Decorator: register ``builder(config) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name or "," in name or " " in name.strip():
        raise ValueError(f"name: expected one word without commas, got {name!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = builder
        return builder

    return decorate


def registered_mixers() -> list[str]:
    """The names a pattern may use."""
    return list(_BUILDERS)


@dataclass(frozen=True)
class LayerMixer:
    """The mixer of one block: a registered ``name`` and whether it stays inside each frame,
    or a hybrid of ``members`` (LayerMixers of single mixers) whose outputs are summed."""

    name: str
    frame_local: bool = False
    members: tuple = ()

    @property
    def hybrid(self) -> bool:
        return bool(self.members)

    def __str__(self) -> str:
        if self.members:
            return " + ".join(str(m) for m in self.members)
        return f"{FRAME_LOCAL} {self.name}" if self.frame_local else self.name


def _parse_member(raw: str, pattern: str) -> LayerMixer:
    words = raw.split()
    local = bool(words) and words[0] == FRAME_LOCAL
    if local:
        words = words[1:]
    if len(words) != 1 or words[0] not in _BUILDERS:
        raise ValueError(f"mixer: bad entry {raw.strip()!r} in {pattern!r}; expected one of "
                         f"{registered_mixers()}, optionally after '{FRAME_LOCAL}', or several joined by '+'")
    return LayerMixer(words[0], local)


def parse_mixer_pattern(pattern: str, depth: int | None = None) -> list[LayerMixer]:
    """The mixers of a pattern (see the module docstring): its entries, or, with ``depth``,
    one per block, the entries repeated. Raises ValueError naming a bad entry."""
    if not isinstance(pattern, str):
        raise TypeError(f"mixer: expected a string such as 'pom' or 'frame-local pom, pom', got "
                        f"{type(pattern).__name__}")
    entries = []
    for raw in pattern.split(","):
        members = [_parse_member(part, pattern) for part in raw.split("+")]
        if len(members) == 1:
            entries.append(members[0])
        else:
            entries.append(LayerMixer("+".join(m.name for m in members), members=tuple(members)))
    if depth is None:
        return entries
    return [entries[i % len(entries)] for i in range(depth)]


def mixer_names(pattern: str) -> set[str]:
    """The registered names a pattern uses (``{"pom"}`` for ``"frame-local pom, pom"``)."""
    return {member.name for layer in parse_mixer_pattern(pattern) for member in (layer.members or (layer,))}


def legacy_frame_local_pattern(mixer: str, every: int) -> str:
    """The pattern of a config saved with ``frame_local_every=every`` (blocks 0, k, 2k, ...
    frame-local), before patterns existed."""
    if not every:
        return mixer
    return ", ".join([f"{FRAME_LOCAL} {mixer}"] + [mixer] * (every - 1))


def build_mixer(layer: LayerMixer, config) -> nn.Module:
    """The token mixer of ``layer`` for a model ``config`` (a TransformerConfig); a hybrid
    gives a :class:`MixerSum` (which handles its members' frame-locality itself). A
    frame-local mixer sees one frame, so it gets the plain mean as its frame memory (no
    decay parameters that nothing would train)."""
    if layer.hybrid:
        return MixerSum([_BUILDERS[m.name](_one_frame(config) if m.frame_local else config) for m in layer.members],
                        [m.frame_local for m in layer.members])
    return _BUILDERS[layer.name](_one_frame(config) if layer.frame_local else config)


def _one_frame(config):
    """``config`` with the plain mean as PoM's frame memory (for a frame-local mixer)."""
    if getattr(config, "pom_frame_memory", "mean") == "mean":
        return config
    return dataclasses.replace(config, pom_frame_memory="mean")


def frame_local_call(mixer: nn.Module, x: torch.Tensor, mode: dict) -> torch.Tensor:
    """``mixer`` inside each frame of ``x: (B, N, D)``: the frames are the blocks of
    ``mode["block_size"]`` tokens (the whole sequence without one), mixed as a batch of
    ``(B * N / T, T, D)``; ``mode["positions"]`` (``(N, A)`` or ``(B, N, A)``, for a mixer
    that uses them) is cut the same way, ``mode["grid"]`` (the rows and columns of a frame)
    passed on. Any other context mode is an error."""
    mode = dict(mode)
    size = mode.pop("block_size", None)
    layout = {key: value for key in ("positions", "grid") if (value := mode.pop(key, None)) is not None}
    if mode:
        raise ValueError(f"mode: a frame-local mixer takes only block_size, got {sorted(mode)}")
    if size is None:
        return mixer(x, **layout)
    B, N, D = x.shape
    if N % size != 0:
        raise ValueError(f"block_size: a frame-local block needs whole frames; {size} does not divide the "
                         f"{N} tokens")
    frames = x.reshape(B * N // size, size, D)
    positions = layout.get("positions")
    if positions is not None:
        positions = positions.expand(B, *positions.shape[-2:]) if positions.dim() == 2 else positions
        layout["positions"] = positions.reshape(B * N // size, size, positions.shape[-1])
    return mixer(frames, **layout).reshape(B, N, D)


@dataclass
class StateTuple:
    """The states of the members of a :class:`MixerSum` (``None`` for a frame-local member)."""

    states: tuple

    def _map(self, fn) -> "StateTuple":
        return StateTuple(tuple(None if s is None else fn(s) for s in self.states))

    def to(self, device=None, dtype=None) -> "StateTuple":
        return self._map(lambda s: s.to(device=device, dtype=dtype))

    def clone(self) -> "StateTuple":
        return self._map(lambda s: s.clone())

    def detach(self) -> "StateTuple":
        return self._map(lambda s: s.detach())

    def reset_(self, rows: torch.Tensor | None = None) -> "StateTuple":
        """Forget what was seen, in place, in every member's state (all rows, or ``rows``).
        Some rows only is refused before any member changes when a member forgets all its
        rows or none (``resets_rows = False``: the frame before, a key-value cache)."""
        if rows is not None and not bool(torch.as_tensor(rows).bool().all()):
            for s in self.states:
                if s is not None and not getattr(s, "resets_rows", True):
                    raise ValueError(f"rows: a {type(s).__name__} state forgets all its rows or none; keep one "
                                     f"state per group of rows that restart together")
        for s in self.states:
            if s is not None:
                s.reset_() if rows is None else s.reset_(rows)
        return self

    def state_dict(self) -> dict:
        return {f"{i}.{k}": v for i, s in enumerate(self.states) if s is not None for k, v in s.state_dict().items()}

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.states if s is not None)


class MixerSum(nn.Module):
    """A hybrid token mixer: the sum of its members' outputs, ``y = sum_m mixer_m(x)``.

    A frame-local member mixes inside each frame (``block_size``) and keeps no state; the
    others get the call's context mode. It streams when every other member streams; its
    state is a :class:`StateTuple`, constant in size when theirs are. The tokens'
    ``positions`` go to the members that declare ``uses_positions`` (rotary PoM), the
    ``grid`` of a frame to those that declare ``uses_grid`` (a convolution).
    """

    def __init__(self, mixers: list[nn.Module], frame_local: list[bool]):
        super().__init__()
        if len(mixers) != len(frame_local) or len(mixers) < 2:
            raise ValueError("mixers: a hybrid sums at least two mixers, each with its frame_local flag")
        self.mixers = nn.ModuleList(mixers)
        self.frame_local = tuple(bool(f) for f in frame_local)
        crossing = [m for m, local in zip(self.mixers, self.frame_local) if not local]
        self.streams = all(can_stream(m) for m in crossing)
        self.constant_state = self.streams and all(getattr(m, "constant_state", False) for m in crossing)
        self.uses_positions = any(getattr(m, "uses_positions", False) for m in self.mixers)
        self.uses_grid = any(getattr(m, "uses_grid", False) for m in self.mixers)

    def extra_repr(self) -> str:
        return f"frame_local={self.frame_local}"

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None, **mode) -> torch.Tensor:
        out = None
        for mixer, local in zip(self.mixers, self.frame_local):
            kw = _layout_for(mixer, positions, grid)
            y = frame_local_call(mixer, x, {**mode, **kw}) if local else mixer(x, **mode, **kw)
            out = y if out is None else out + y
        return out

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> StateTuple:
        if not self.streams:
            raise ValueError("state: a member of this hybrid mixer cannot stream")
        return StateTuple(tuple(None if local else m.init_state(batch_size, device=device, dtype=dtype)
                                for m, local in zip(self.mixers, self.frame_local)))

    def step(self, x: torch.Tensor, state: StateTuple, positions: torch.Tensor | None = None,
             grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, StateTuple]:
        if not isinstance(state, StateTuple) or len(state.states) != len(self.mixers):
            raise TypeError(f"state: expected the StateTuple of init_state, got {type(state).__name__}")
        out, new = None, []
        for mixer, local, s in zip(self.mixers, self.frame_local, state.states):
            kw = _layout_for(mixer, positions, grid)
            if local:  # x is one frame: the member mixes it alone
                y, s = mixer(x, **kw), None
            else:
                y, s = mixer.step(x, s, **kw)
            out = y if out is None else out + y
            new.append(s)
        return out, StateTuple(tuple(new))


def _layout_for(mixer: nn.Module, positions: torch.Tensor | None, grid: tuple[int, int] | None) -> dict:
    """The ``positions`` and ``grid`` keywords ``mixer`` declares it takes (``uses_positions``,
    ``uses_grid``)."""
    kw = {}
    if getattr(mixer, "uses_positions", False):
        if positions is None:
            raise ValueError(f"positions: {type(mixer).__name__} takes the tokens' positions (rotary); pass them")
        kw["positions"] = positions
    if getattr(mixer, "uses_grid", False):
        if grid is None:
            raise ValueError(f"grid: {type(mixer).__name__} takes the token grid (rows, columns); pass it")
        kw["grid"] = grid
    return kw


@register_mixer("pom")
def _pom(config) -> nn.Module:
    rotary = getattr(config, "pom_rotary", 0)
    memory = getattr(config, "pom_frame_memory", "mean")
    if not rotary:
        return PolynomialMixer(config.width, degree=config.pom_degree, expand=config.pom_expand,
                               variant=config.pom_variant, heads=config.pom_heads,
                               implementation=config.pom_implementation, frame_memory=memory)
    # slowest pair: a quarter turn over the token grid (at least 8 tokens)
    grid = max(8, getattr(config, "image_size", 0) // config.patch_size, getattr(config, "frames", 0))
    return PolynomialMixer(config.width, degree=config.pom_degree, expand=config.pom_expand,
                           variant=config.pom_variant, heads=config.pom_heads,
                           implementation=config.pom_implementation, rotary_axes=rotary,
                           rotary_min_freq=math.pi / (4 * grid), frame_memory=memory)


@register_mixer("attention")
def _attention(config) -> nn.Module:
    return MultiHeadAttention(config.width, heads=config.heads, qk_norm=config.qk_norm,
                              window=getattr(config, "attention_window", 0) or None)


@dataclass
class NoState:
    """The state of a mixer that reads nothing of earlier blocks (:class:`GridConv`)."""

    def to(self, device=None, dtype=None) -> "NoState":
        return self

    def clone(self) -> "NoState":
        return self

    def detach(self) -> "NoState":
        return self

    def state_dict(self) -> dict:
        return {}

    @classmethod
    def from_state_dict(cls, state: dict) -> "NoState":
        if state:
            raise ValueError(f"state: a NoState holds nothing, got {sorted(state)}")
        return cls()

    def reset_(self, rows: torch.Tensor | None = None) -> "NoState":
        return self

    def nbytes(self) -> int:
        return 0


class GridConv(nn.Module):
    """A ``kernel x kernel`` depthwise convolution over the token grid of each frame, as a
    token mixer: ``forward(x, grid)`` with ``x: (B, N, D)`` made of consecutive
    ``grid = (rows, columns)`` frames. Zero padding; identity at start (the centre tap 1),
    so ``"pom + conv"`` starts as PoM plus the block's own input. Each frame is mixed
    alone, so it streams with an empty state (``step`` takes whole frames)."""

    uses_grid = True
    constant_state = True

    def __init__(self, width: int, kernel: int = 3):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel: expected an odd size, got {kernel}")
        self.conv = nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = self.conv.kernel_size[0]
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, k // 2, k // 2] = 1.0
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, **mode) -> torch.Tensor:
        if grid is None:
            raise ValueError("grid: GridConv needs the token grid (rows, columns) of a frame")
        rows, cols = grid
        B, N, D = x.shape
        if N % (rows * cols) != 0:
            raise ValueError(f"grid: {rows}x{cols} grids do not tile the {N} tokens")
        g = x.reshape(-1, rows, cols, D).permute(0, 3, 1, 2)
        return self.conv(g).permute(0, 2, 3, 1).reshape(B, N, D)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> NoState:
        return NoState()

    def step(self, x: torch.Tensor, state: NoState, grid: tuple[int, int] | None = None):
        return self.forward(x, grid), state


@register_mixer("conv")
def _conv(config) -> nn.Module:
    return GridConv(config.width, 3)


class NeighbourhoodAttention(nn.Module):
    """Softmax attention of each token to the ``kernel x kernel`` tokens around it in its own
    frame's token grid (neighbourhood attention), as a token mixer: ``forward(x, grid)`` with
    ``x: (B, N, D)`` made of consecutive ``grid = (rows, columns)`` frames.

    Per head, token ``i`` at ``(r, c)`` reads ``sum_j softmax_j(q_i . k_j / sqrt(d) + b[j - i]) v_j``
    over the in-frame tokens ``j`` with ``|r_j - r| <= kernel // 2`` and ``|c_j - c| <= kernel // 2``
    (fewer at the frame's edges), where ``b`` is a learned bias per head and relative offset
    (zero at start). A frame of at most ``dense_up_to`` tokens is one masked attention call;
    a larger one is cut into ``tile x tile`` query tiles, each reading the keys of its tile
    and a margin of ``kernel // 2``: ``O(N * (tile + kernel - 1)^2)``, linear in the number
    of tokens. Each frame is mixed alone, so it streams with an empty state (``step`` takes
    whole frames) and the context mode of the call (``block_size``, ...) changes nothing.
    """

    uses_grid = True
    constant_state = True

    def __init__(self, width: int, heads: int = 4, kernel: int = 5, qk_norm: bool = False, *,
                 tile: int = 8, dense_up_to: int = 128):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel: expected an odd size, got {kernel}")
        if width % heads != 0:
            raise ValueError(f"heads: {heads} does not divide width={width}")
        if tile < 1:
            raise ValueError(f"tile: expected a positive size, got {tile}")
        self.width, self.heads, self.kernel, self.head_dim = width, heads, kernel, width // heads
        self.tile, self.dense_up_to = tile, dense_up_to
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim)
            self.k_norm = nn.RMSNorm(self.head_dim)
        self.position_bias = nn.Parameter(torch.zeros(heads, kernel * kernel))

    def extra_repr(self) -> str:
        return f"width={self.width}, heads={self.heads}, kernel={self.kernel}, qk_norm={self.qk_norm}"

    def _bias(self, q_rc: torch.Tensor, k_rc: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """``(H, Q, K)``: the learned bias of each query-key offset (from ``table``, by default
        ``position_bias``), ``-inf`` beyond the neighbourhood; ``q_rc: (Q, 2)``, ``k_rc: (K, 2)``
        integer (row, column) coordinates."""
        r = self.kernel // 2
        offset = k_rc[None, :, :] - q_rc[:, None, :]  # (Q, K, 2)
        near = (offset.abs() <= r).all(-1)
        index = ((offset[..., 0] + r) * self.kernel + offset[..., 1] + r).clamp(0, self.kernel ** 2 - 1)
        bias = (self.position_bias if table is None else table)[:, index]  # (H, Q, K)
        return bias.masked_fill(~near, float("-inf"))

    def _frames(self, x: torch.Tensor, grid: tuple[int, int] | None) -> tuple[int, int, int]:
        """``(rows, columns, tokens per frame)`` of ``grid``, checked against ``x: (B, N, D)``."""
        if grid is None:
            raise ValueError(f"grid: {type(self).__name__} needs the token grid (rows, columns) of a frame")
        rows, cols = grid
        T = rows * cols
        if x.shape[1] % T != 0:
            raise ValueError(f"grid: {rows}x{cols} grids do not tile the {x.shape[1]} tokens")
        return rows, cols, T

    def _project(self, x: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values ``(G, H, T, d)`` of the ``G`` frames of ``x: (B, N, D)``."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B * N // T, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _attend(self, q, k, v, rows: int, cols: int, previous: tuple | None = None) -> torch.Tensor:
        """``(G, H, T, d)``: each query against the neighbourhood of its place among the keys
        ``k`` (and values ``v``) of its frame and, when ``previous = (keys, values, table)``
        is given, also among those keys of another frame, with the bias ``table``."""
        if rows * cols <= self.dense_up_to:
            rc = _grid_coordinates(rows, cols, q.device)
            mask = self._bias(rc, rc)
            if previous is not None:
                k, v = torch.cat([k, previous[0]], dim=2), torch.cat([v, previous[1]], dim=2)
                mask = torch.cat([mask, self._bias(rc, rc, previous[2])], dim=-1)
            return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self._tiled(q, k, v, rows, cols, previous)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, **mode) -> torch.Tensor:
        rows, cols, T = self._frames(x, grid)
        q, k, v = self._project(x, T)
        return self.out_proj(self._attend(q, k, v, rows, cols).transpose(1, 2).reshape(x.shape))

    def _tiled(self, q, k, v, rows: int, cols: int, previous: tuple | None = None) -> torch.Tensor:
        """The attention of ``(G, H, T, d)`` queries by ``tile x tile`` tiles, each against
        its tile and a margin of ``kernel // 2`` (keys outside the frame masked), and the
        same window of ``previous = (keys, values, table)`` when given (see :meth:`_attend`)."""
        G, H, T, d = q.shape
        t, r = self.tile, self.kernel // 2
        tr, tc = -(-rows // t), -(-cols // t)  # tiles per column and row
        span = t + 2 * r

        def padded(z, margin):  # (G, H, T, d) -> (G, H*d, rows + ..., cols + ...), zeros outside
            z = z.permute(0, 1, 3, 2).reshape(G, H * d, rows, cols)
            return nn.functional.pad(z, (margin, tc * t - cols + margin, margin, tr * t - rows + margin))

        def windows(z):  # the keys (or values) each tile reads: (G, tiles, H, span^2, d)
            w = nn.functional.unfold(padded(z, r), span, stride=t)  # (G, H*d*span^2, tiles)
            return w.view(G, H, d, span * span, tr * tc).permute(0, 4, 1, 3, 2)

        qt = padded(q, 0).view(G, H, d, tr, t, tc, t).permute(0, 3, 5, 1, 4, 6, 2).reshape(G, tr * tc, H, t * t, d)
        # coordinates of each tile's queries and keys; keys outside the frame never count
        ty, tx = torch.meshgrid(torch.arange(tr, device=q.device), torch.arange(tc, device=q.device), indexing="ij")
        origin = torch.stack([ty.reshape(-1), tx.reshape(-1)], -1) * t  # (tiles, 2)
        q_rc = origin[:, None, :] + _grid_coordinates(t, t, q.device)[None]  # (tiles, t*t, 2)
        k_rc = origin[:, None, :] - r + _grid_coordinates(span, span, q.device)[None]  # (tiles, span^2, 2)
        # the offsets of a tile's queries to its keys are the same in every tile: one bias for all
        bias = self._bias(q_rc[0] - origin[0], k_rc[0] - origin[0])[None]  # (1, H, t*t, span^2)
        inside = ((k_rc >= 0) & (k_rc < torch.tensor([rows, cols], device=q.device))).all(-1)
        q_inside = ((q_rc < torch.tensor([rows, cols], device=q.device))).all(-1)
        # a padding query reads its own (zero) key so that no row is empty; its output is cut off
        keep = inside[:, None, None, :] | ~q_inside[:, None, :, None]
        mask = bias.masked_fill(~keep, float("-inf"))
        keys, values = windows(k), windows(v)
        if previous is not None:
            bias = self._bias(q_rc[0] - origin[0], k_rc[0] - origin[0], previous[2])[None]
            mask = torch.cat([mask, bias.masked_fill(~keep, float("-inf"))], dim=-1)
            keys, values = torch.cat([keys, windows(previous[0])], dim=3), torch.cat([values, windows(previous[1])], 3)
        out = nn.functional.scaled_dot_product_attention(qt, keys, values, attn_mask=mask.to(q.dtype))
        out = out.view(G, tr, tc, H, t, t, d).permute(0, 3, 1, 4, 2, 5, 6).reshape(G, H, tr * t, tc * t, d)
        return out[:, :, :rows, :cols].reshape(G, H, T, d)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> NoState:
        return NoState()

    def step(self, x: torch.Tensor, state: NoState, grid: tuple[int, int] | None = None):
        return self.forward(x, grid), state


def _grid_coordinates(rows: int, cols: int, device=None) -> torch.Tensor:
    """``(rows * cols, 2)`` integer (row, column) of a grid's cells, row-major."""
    r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack([r.reshape(-1), c.reshape(-1)], -1)


@register_mixer("local-attention")
def _local_attention(config) -> nn.Module:
    return NeighbourhoodAttention(config.width, heads=config.heads, kernel=5, qk_norm=config.qk_norm)


@dataclass
class PreviousFrame:
    """The streaming state of :class:`SpacetimeNeighbourhoodAttention`: the keys and values
    ``(B, heads, T, head_dim)`` of the last frame seen (``None`` before the first), so its
    size never grows with the frames."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    resets_rows = False  # forgets all rows or none (see reset_)

    def _map(self, fn) -> "PreviousFrame":
        return self if self.keys is None else PreviousFrame(fn(self.keys), fn(self.values))

    def to(self, device=None, dtype=None) -> "PreviousFrame":
        return self._map(lambda z: z.to(device=device, dtype=dtype))

    def clone(self) -> "PreviousFrame":
        return self._map(torch.clone)

    def detach(self) -> "PreviousFrame":
        return self._map(torch.Tensor.detach)

    def state_dict(self) -> dict:
        return {} if self.keys is None else {"keys": self.keys, "values": self.values}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PreviousFrame":
        if not state:
            return cls()
        if set(state) != {"keys", "values"} or state["keys"].shape != state["values"].shape:
            raise ValueError(f"state: expected keys and values of one shape, got {sorted(state)}")
        return cls(state["keys"], state["values"])

    def reset_(self, rows: torch.Tensor | None = None) -> "PreviousFrame":
        """Forget the last frame, in place: all rows only (a stream whose rows restart at
        different frames keeps one state per group of rows)."""
        if rows is not None and not bool(torch.as_tensor(rows).bool().all()):
            raise ValueError("rows: a PreviousFrame state forgets all its rows or none; keep one state per "
                             "group of rows that restart together")
        self.keys = self.values = None
        return self

    def nbytes(self) -> int:
        return 0 if self.keys is None else 2 * self.keys.numel() * self.keys.element_size()


class SpacetimeNeighbourhoodAttention(NeighbourhoodAttention):
    """Neighbourhood attention over a frame *and the frame before it*: token ``i`` at ``(r, c)``
    of frame ``f`` reads, by one softmax, the ``kernel x kernel`` tokens around ``(r, c)`` in
    frame ``f`` (bias ``position_bias``) and in frame ``f - 1`` (bias ``previous_bias``, both
    learned per head and offset, zero at start); the first frame reads its own frame only.

    What it adds beside PoM in a video model: a token can copy what was at (or near) its
    place one frame ago, so a digit that moves a little each frame can keep its exact shape,
    which a summary of all earlier frames cannot hold. Block-causal by construction: the call
    takes consecutive frames of ``grid = (rows, columns)`` tokens (``block_size``, when given,
    must be one frame) and never reads a later frame. It streams with a constant state, the
    last frame's keys and values (:class:`PreviousFrame`): ``step`` takes whole frames and
    equals the parallel call. Cost ``O(N * 2 kernel^2)`` (tiled like the parent for large
    frames).
    """

    def __init__(self, width: int, heads: int = 4, kernel: int = 5, qk_norm: bool = False, **options):
        super().__init__(width, heads, kernel, qk_norm, **options)
        self.previous_bias = nn.Parameter(torch.zeros(heads, kernel * kernel))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, block_size: int | None = None,
                **mode) -> torch.Tensor:
        y, _ = self._run(x, grid, block_size, mode, PreviousFrame())
        return y

    def _run(self, x, grid, block_size, mode, state: PreviousFrame):
        if mode:
            raise ValueError(f"mode: {type(self).__name__} is block-causal over frames and takes only block_size, "
                             f"got {sorted(mode)}")
        rows, cols, T = self._frames(x, grid)
        if block_size is not None and block_size != T:
            raise ValueError(f"block_size: {type(self).__name__} takes blocks of one {rows}x{cols} frame "
                             f"({T} tokens), got {block_size}")
        B, N, D = x.shape
        F, H, d = N // T, self.heads, self.head_dim
        q, k, v = (z.view(B, F, H, T, d) for z in self._project(x, T))
        outs = []
        if state.keys is None:  # the first frame has no frame before it
            outs.append(self._attend(q[:, 0], k[:, 0], v[:, 0], rows, cols)[:, None])
            q_rest, first = q[:, 1:], 1
            prev_k, prev_v = k[:, :-1], v[:, :-1]
        else:
            q_rest, first = q, 0
            prev_k = torch.cat([state.keys[:, None].to(k.dtype), k[:, :-1]], dim=1)
            prev_v = torch.cat([state.values[:, None].to(v.dtype), v[:, :-1]], dim=1)
        if F > first:
            G = B * (F - first)
            flat = lambda z: z.reshape(G, H, T, d)  # noqa: E731
            out = self._attend(flat(q_rest), flat(k[:, first:]), flat(v[:, first:]), rows, cols,
                               (flat(prev_k), flat(prev_v), self.previous_bias))
            outs.append(out.view(B, F - first, H, T, d))
        out = torch.cat(outs, dim=1)  # (B, F, H, T, d)
        y = self.out_proj(out.permute(0, 1, 3, 2, 4).reshape(B, N, D))
        return y, PreviousFrame(k[:, -1], v[:, -1])

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> PreviousFrame:
        return PreviousFrame()

    def step(self, x: torch.Tensor, state: PreviousFrame, grid: tuple[int, int] | None = None):
        if not isinstance(state, PreviousFrame):
            raise TypeError(f"state: expected the PreviousFrame of init_state, got {type(state).__name__}")
        if state.keys is not None and state.keys.shape[0] != x.shape[0]:
            raise ValueError(f"state: holds a batch of {state.keys.shape[0]}, x has {x.shape[0]}")
        return self._run(x, grid, None, {}, state)


@register_mixer("spacetime-local")
def _spacetime_local(config) -> nn.Module:
    return SpacetimeNeighbourhoodAttention(config.width, heads=config.heads, kernel=5, qk_norm=config.qk_norm)

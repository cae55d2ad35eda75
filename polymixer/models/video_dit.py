"""Class-conditional video diffusion transformer whose mixers are block-causal over frames.

A clip ``(B, F, C, H, W)`` is cut into frames (or groups of ``temporal_patch`` frames, one
"latent frame" each), every frame into ``p x p`` patches: ``T = (H/p)(W/p)`` tokens per
frame, ``N = F/temporal_patch * T`` in all, with 2-D sin-cos positions inside the frame plus
a 1-D sin-cos position of the frame. The blocks are the image DiT's adaLN-Zero blocks
(``models/blocks.py``); every token mixer runs block-causal with one block per frame
(``block_size=T``): a frame reads itself and all earlier frames, never a later one, in
O(N) for PoM (no N x N tensor) and with the same mask for attention. A block whose entry
in the ``mixer`` pattern is ``frame-local`` (e.g. ``"frame-local pom, pom"``) mixes inside
each frame only and keeps no state.

Two ways to condition on time (``noise_levels``):

* ``"clip"`` (the paper's training): one time per clip, ``t: (B,)``. Frame f's whole
  denoising trajectory then depends only on frames <= f, so frames can be generated one
  after another with, per sampling evaluation and layer, the running state of the finished
  frames (:meth:`VideoDiT.step`), equal to joint denoising.
* ``"frame"`` (diffusion forcing): one time per frame, ``t: (B, F)``; each frame's tokens
  are modulated by their own frame's time. Clean earlier frames (t = 0) condition the
  next ones, so one state per layer, fed from each finished clean frame, is enough, and a
  given clip can be continued.

Calls: ``model(x_t, t, y, *, frame_offset=0)`` -> ``(B, F, C, H, W)``, all frames at once;
``frame_offset`` is the index of the first frame of ``x_t`` (its temporal position).
Streaming: ``state = model.init_state(B)`` (a :class:`~polymixer.nn.StateCache`, one state
per block that mixes across frames), then ``out, state = model.step(x_t, t, y, state,
frame_offset=f)`` for the next frames: they read the state of the frames before and are
added to the returned state (the given one is not changed). Frame by frame this equals the
parallel call. Any token mixer that streams works (PoM: a constant-size sum; attention: a
key-value cache that grows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..nn.state import StateCache
from .blocks import (
    build_blocks,
    FinalLayer,
    TimestepEmbedding,
    TransformerConfig,
    check_condition,
    check_labels,
    check_rotary_axes,
    labels_of,
    init_dit_weights,
    run_blocks,
    sincos_1d,
    sincos_2d,
    token_coordinates,
)
from .dit import check_time
from .mixers import legacy_frame_local_pattern
from ..conditioning import ClassLabels, as_condition
from ..ops.plan import compiling
from .registry import config_from_dict, config_to_dict, register_model

__all__ = ["VideoDiTConfig", "VideoDiT", "NOISE_LEVELS"]

ARCHITECTURE = "polymixer.VideoDiT"
NOISE_LEVELS = ("clip", "frame")
FRAME_EMBEDDINGS = ("sincos", "none")


INPUTS = "inputs"  # the StateCache key of the last inputs (context_frames)


def _state_order(key: str) -> tuple:
    return (1, 0) if key == INPUTS else (0, int(key)) if key.isdigit() else (2, key)


@dataclass
class RecentFrames:
    """The streaming state of a model with ``context_frames = K``: the inputs ``(B, k, C, H, W)``
    of its last k <= K frames, oldest first (``None`` before the first), so its size never
    grows with the frames. A value: :meth:`push` returns a new state."""

    frames: torch.Tensor | None = None

    def push(self, x: torch.Tensor, keep: int) -> "RecentFrames":
        """This state followed by the frames ``x: (B, F, C, H, W)``, keeping the last ``keep``."""
        full = x if self.frames is None else torch.cat([self.frames.to(x.dtype), x], dim=1)
        return RecentFrames(full[:, -keep:])

    def _map(self, fn) -> "RecentFrames":
        return self if self.frames is None else RecentFrames(fn(self.frames))

    def to(self, device=None, dtype=None) -> "RecentFrames":
        return self._map(lambda z: z.to(device=device, dtype=dtype))

    def clone(self) -> "RecentFrames":
        return self._map(torch.clone)

    def detach(self) -> "RecentFrames":
        return self._map(torch.Tensor.detach)

    def state_dict(self) -> dict:
        return {} if self.frames is None else {"frames": self.frames}

    @classmethod
    def from_state_dict(cls, state: dict) -> "RecentFrames":
        if set(state) - {"frames"} or ("frames" in state and state["frames"].dim() != 5):
            raise ValueError(f"state: expected frames (B, k, C, H, W), got {sorted(state)}")
        return cls(state.get("frames"))

    def reset_(self, rows: torch.Tensor | None = None) -> "RecentFrames":
        """Forget the frames, in place: of every row, or of the rows where ``rows`` (a
        ``(B,)`` mask) is true (zeros, which is what a clip's first frame reads)."""
        if rows is None or self.frames is None:
            self.frames = None
        else:
            rows = torch.as_tensor(rows, device=self.frames.device).bool()
            self.frames = self.frames.masked_fill(rows[:, None, None, None, None], 0)
        return self

    def nbytes(self) -> int:
        return 0 if self.frames is None else self.frames.numel() * self.frames.element_size()


@dataclass
class VideoDiTConfig(TransformerConfig):
    """Hyper-parameters of a :class:`VideoDiT` (serialised as ``config.json``).

    Args:
        image_size: side of the square frames (the model also takes other sizes whose
            sides are divisible by ``patch_size``).
        frames: frames of the training clips (sampling may make more or fewer).
        temporal_patch: consecutive frames folded into one token grid (1 = every frame).
        noise_levels: ``"clip"`` (one time per clip, the paper's) or ``"frame"`` (one per
            frame, diffusion forcing; needs ``temporal_patch == 1``).
        frame_embedding: ``"sincos"`` (default: a 1-D sin-cos embedding of the frame index is
            added to every token of the frame) or ``"none"`` (no absolute time position: the
            model knows time only through its mixers, e.g. relative rotary positions with
            ``pom_rotary=3``, which is what lets it run past the training length).
        context_frames: K >= 0 earlier frames whose inputs are stacked onto each frame's
            channels before the patch embedding (0 = none, the default): frame f's patches
            see its own pixels and, at the same places, those of frames f-1 .. f-K as the
            model was given them (zeros before the clip's first frame). A direct, local view
            of the frames before, in which a digit that only moves can be copied; it keeps
            the model block-causal, and streaming keeps the last K inputs (constant size).
            Needs ``temporal_patch == 1``.
        The mixer pattern (``mixer``) may make blocks frame-local: ``"frame-local pom, pom"``
        alternates spatial blocks (inside each frame, no state) and block-causal ones.
        Configs saved with ``frame_local_every=k`` load as the pattern with blocks 0, k,
        2k, ... frame-local.
        The other fields are :class:`~polymixer.models.blocks.TransformerConfig`'s.
    """

    image_size: int = 32
    frames: int = 8
    temporal_patch: int = 1
    noise_levels: str = "clip"
    frame_embedding: str = "sincos"
    context_frames: int = 0

    INT_FIELDS = TransformerConfig.INT_FIELDS + ("image_size", "frames", "temporal_patch")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size: {self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.frames % self.temporal_patch != 0:
            raise ValueError(f"frames: {self.frames} is not divisible by temporal_patch={self.temporal_patch}")
        if self.noise_levels not in NOISE_LEVELS:
            raise ValueError(f"noise_levels: expected one of {NOISE_LEVELS}, got {self.noise_levels!r}")
        if self.frame_embedding not in FRAME_EMBEDDINGS:
            raise ValueError(f"frame_embedding: expected one of {FRAME_EMBEDDINGS}, got {self.frame_embedding!r}")
        if self.noise_levels == "frame" and self.temporal_patch != 1:
            raise ValueError("noise_levels: 'frame' needs temporal_patch=1 (one time per token grid)")
        if isinstance(self.context_frames, bool) or not isinstance(self.context_frames, int) or self.context_frames < 0:
            raise ValueError(f"context_frames: expected an int >= 0, got {self.context_frames!r}")
        if self.context_frames and self.temporal_patch != 1:
            raise ValueError("context_frames: needs temporal_patch=1 (the frames before are stacked per frame)")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VideoDiTConfig":
        return config_from_dict(data, expected=ARCHITECTURE)

    @staticmethod
    def upgrade(data: dict) -> dict:
        """A saved config's fields in today's form: ``frame_local_every=k`` becomes the mixer
        pattern with blocks 0, k, 2k, ... frame-local."""
        data = dict(data)
        if "frame_local_every" in data:
            every = data.pop("frame_local_every")
            if isinstance(every, bool) or not isinstance(every, int) or every < 0:
                raise ValueError(f"frame_local_every: expected an int >= 0, got {every!r}")
            data["mixer"] = legacy_frame_local_pattern(data.get("mixer", "pom"), every)
        return data


@register_model(ARCHITECTURE, VideoDiTConfig)
class VideoDiT(nn.Module):
    """Video DiT: adaLN-Zero blocks, block-causal over frames, PoM or attention mixers.

    ``forward(x, t, y, *, frame_offset=0)`` with ``x: (B, F, C, H, W)``, ``t: (B,)`` (or
    ``(B, F)`` for ``noise_levels="frame"``), ``y: (B,)`` labels in [0, n_classes] ->
    ``(B, F, C, H, W)``; ``step(x, t, y, state, *, frame_offset)`` -> ``(out, state)`` for
    streaming. See the module docstring.
    """

    kind = "video"

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        if not isinstance(config, VideoDiTConfig):
            raise TypeError(f"config: expected a VideoDiTConfig, got {type(config).__name__}")
        self.config = config
        D, p, tp = config.width, config.patch_size, config.temporal_patch
        self.patch_embed = nn.Conv2d((1 + config.context_frames) * tp * config.in_channels, D, kernel_size=p, stride=p)
        self.time_embed = TimestepEmbedding(D)
        self.class_embed = nn.Embedding(config.n_classes + 1, D)
        grid = config.image_size // p
        self.register_buffer("pos_embed", sincos_2d(grid, grid, D).unsqueeze(0), persistent=False)
        check_rotary_axes(config, 3, "a video (frame, row, column)")
        self.blocks = build_blocks(config)
        self.uses_positions = any(block.uses_positions for block in self.blocks)
        self.final = FinalLayer(D, tp * p * p * config.in_channels)
        self.gradient_checkpointing = False
        init_dit_weights(self)

    # -------------------------------------------------------------- checks
    def check_frame_size(self, height: int, width: int) -> None:
        p = self.config.patch_size
        if height % p != 0 or width % p != 0:
            raise ValueError(f"frame size: {height}x{width} is not divisible by the model's patch size {p}")

    def check_frames(self, frames: int) -> None:
        """Raise ValueError unless ``frames`` (a clip length) fits the temporal patch."""
        tp = self.config.temporal_patch
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames: expected a positive int, got {frames!r}")
        if frames % tp != 0:
            raise ValueError(f"frames: {frames} is not a multiple of the model's temporal patch {tp}")

    def condition(self, labels) -> ClassLabels:
        """Class labels ``(B,)`` (a tensor or a list) as this model's conditioning object."""
        return as_condition(labels, self.config.n_classes)

    def check_labels(self, y: torch.Tensor) -> None:
        check_labels(y, self.config.n_classes)

    def check_clip(self, x) -> None:
        """Raise ValueError unless ``x`` is a ``(B, F, C, H, W)`` clip this model takes."""
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a (B, F, C, H, W) clip, got {shape}")
        if x.shape[2] != self.config.in_channels:
            raise ValueError(f"x: expected {self.config.in_channels} channels per frame, got {x.shape[2]}")
        self.check_frames(x.shape[1])
        self.check_frame_size(x.shape[3], x.shape[4])

    def _check_inputs(self, x, t, y) -> torch.Tensor:
        self.check_clip(x)
        B, frames = x.shape[:2]
        if self.config.noise_levels == "frame":
            t = check_time(t, (B, frames))
        else:
            t = check_time(t, (B,))
        check_condition(y, self.config.n_classes, B)
        return t

    def _check_state(self, state) -> None:
        if not isinstance(state, StateCache):
            raise TypeError(f"state: expected the StateCache of init_state, got {type(state).__name__}")
        expected = {str(i) for i, block in enumerate(self.blocks) if block.keeps_state}
        if self.config.context_frames:
            expected.add(INPUTS)
        if set(state) != expected:
            raise ValueError(f"state: expected one state for each block that mixes across frames "
                             f"{sorted(expected, key=_state_order)}, got {sorted(state, key=_state_order)}")

    # -------------------------------------------------------------- forward
    def positions(self, grid_h: int, grid_w: int, frames: int, frame_offset: int, device, dtype) -> torch.Tensor:
        """Positions ``(1, frames * T, D)``: 2-D inside the frame plus 1-D of the frame index
        (``frame_embedding="sincos"``; none with ``"none"``)."""
        D = self.config.width
        if grid_h == grid_w == self.config.image_size // self.config.patch_size:
            space = self.pos_embed[0]
        else:
            space = sincos_2d(grid_h, grid_w, D)
        if self.config.frame_embedding == "none":
            pos = space[None].expand(frames, -1, -1)
        else:
            time = sincos_1d(torch.arange(frame_offset, frame_offset + frames), D)
            pos = time[:, None, :].to(space.device) + space[None]
        return pos.reshape(1, frames * grid_h * grid_w, D).to(device=device, dtype=dtype)

    def _positions(self, grid: tuple[int, int], num_tokens: int, frame_offset: int, device) -> dict:
        """``{"positions": (frame, row, column) of each token}`` for rotary mixers, else ``{}``;
        frames are token grids (``temporal_patch`` frames each), numbered from
        ``frame_offset // temporal_patch``."""
        if not self.uses_positions:
            return {}
        gh, gw = grid
        return {"positions": token_coordinates(gh, gw, num_tokens // (gh * gw),
                                               frame_offset // self.config.temporal_patch, device=device)}

    def time_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Training times for clips ``x: (B, F, ...)``: ``(B,)`` or ``(B, F)`` per the config."""
        return (x.shape[0], x.shape[1]) if self.config.noise_levels == "frame" else (x.shape[0],)

    def _with_context(self, x: torch.Tensor, before: torch.Tensor | None,
                      context: torch.Tensor | None = None) -> torch.Tensor:
        """``x: (B, F, C, H, W)`` with the inputs of the ``context_frames`` frames before each
        frame stacked onto its channels, nearest first: ``(B, F, (1 + K) C, H, W)``.
        ``before``: the inputs of up to K frames just before ``x`` (oldest first), else zeros;
        ``context``: what the frames of ``x`` show as frames before (default ``x``)."""
        K = self.config.context_frames
        B, F, C, H, W = x.shape
        pad = K - (0 if before is None else before.shape[1])
        parts = [x.new_zeros(B, pad, C, H, W)] if pad else []
        seen = x if context is None else context.to(x.dtype)
        full = torch.cat(parts + ([] if before is None else [before.to(x.dtype)]) + [seen], dim=1)  # (B, K + F, ...)
        stacked = [x] + [full[:, K - j:K - j + F] for j in range(1, K + 1)]
        return torch.stack(stacked, dim=2).reshape(B, F, (K + 1) * C, H, W)

    def _embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, frame_offset: int,
               before: torch.Tensor | None = None, context: torch.Tensor | None = None):
        """Tokens ``(B, G*T, D)`` and conditioning ``(B, D)`` or ``(B, F, D)`` of clips ``x``
        (``before``: see :meth:`_with_context`)."""
        B, frames, C, H, W = x.shape
        p, tp = self.config.patch_size, self.config.temporal_patch
        G, gh, gw = frames // tp, H // p, W // p
        T = gh * gw
        if self.config.context_frames:
            x = self._with_context(x, before, context)
        frames = x.reshape(B * G, -1, H, W)
        tokens = self.patch_embed(frames).flatten(2).transpose(1, 2).reshape(B, G * T, -1)
        tokens = tokens + self.positions(gh, gw, G, frame_offset // tp, tokens.device, tokens.dtype)
        cond = self.time_embed(t)  # (B, D) or (B, F, D)
        label = self.class_embed(labels_of(y))
        cond = cond + (label if cond.dim() == 2 else label[:, None])
        return tokens, cond, (gh, gw)

    def _unembed(self, tokens: torch.Tensor, cond: torch.Tensor, shape) -> torch.Tensor:
        B, frames, C, H, W = shape
        p, tp = self.config.patch_size, self.config.temporal_patch
        out = self.final(tokens, cond)  # (B, G*T, tp*p*p*C)
        out = out.view(B, frames // tp, H // p, W // p, tp, C, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7)
        return out.reshape(B, frames, C, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, frame_offset: int = 0,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the velocity (or noise) of clips ``x: (B, F, C, H, W)``, every frame at
        once, block-causal over frames; see the class docstring.

        ``context`` (``context_frames > 0`` only): the frames ``(B, F, C, H, W)`` whose inputs
        the stacked channels of the frames after them show, instead of ``x`` itself: training
        with the clean frames there (``TrainConfig.clean_context``) shows every frame what
        frame-by-frame sampling shows it, the finished frames before it."""
        if not compiling():
            t = self._check_inputs(x, t, y)
            if context is not None and (not self.config.context_frames or not isinstance(context, torch.Tensor)
                                        or context.shape != x.shape):
                raise ValueError(f"context: expected frames shaped like x {tuple(x.shape)} for a model with "
                                 f"context_frames > 0, got "
                                 f"{tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__}"
                                 f" (context_frames={self.config.context_frames})")
        tokens, cond, grid = self._embed(x, t, y, frame_offset, context=context)
        tokens = run_blocks(self.blocks, tokens, cond, self.gradient_checkpointing, block_size=grid[0] * grid[1],
                            grid=grid, **self._positions(grid, tokens.shape[1], frame_offset, tokens.device))
        return self._unembed(tokens, cond, x.shape)

    def step(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, state: StateCache, *,
             frame_offset: int = 0) -> tuple[torch.Tensor, StateCache]:
        """The next frames ``x: (B, F, C, H, W)`` of a stream whose earlier frames are
        summarised by ``state`` (from :meth:`init_state` or an earlier step); returns the
        prediction ``(B, F, C, H, W)`` and the state that also holds these frames. One frame
        (group of ``temporal_patch`` frames) after another, each reading the ones before:
        equal to the parallel call on the whole clip. ``state`` is not changed."""
        if not compiling():
            t = self._check_inputs(x, t, y)
            self._check_state(state)
        tp = self.config.temporal_patch
        outs = []
        for g in range(x.shape[1] // tp):
            xg = x[:, g * tp:(g + 1) * tp]
            tg = t[:, g * tp:(g + 1) * tp] if t.dim() == 2 else t
            new = {}
            before = None
            if self.config.context_frames:
                before = state[INPUTS].frames
                new[INPUTS] = state[INPUTS].push(xg, self.config.context_frames)
            tokens, cond, grid = self._embed(xg, tg, y, frame_offset + g * tp, before)
            positions = self._positions(grid, tokens.shape[1], frame_offset + g * tp, tokens.device)
            for i, block in enumerate(self.blocks):
                tokens, block_state = block.step(tokens, cond, state[str(i)] if block.keeps_state else None, grid=grid,
                                                 **positions)
                if block.keeps_state:
                    new[str(i)] = block_state
            state = StateCache(new)
            outs.append(self._unembed(tokens, cond, xg.shape))
        return torch.cat(outs, dim=1), state

    def frame_local_blocks(self) -> frozenset:
        """Indices of the blocks that mix inside each frame only (``frame-local`` in the pattern)."""
        return frozenset(i for i, block in enumerate(self.blocks) if block.layer.frame_local)

    # -------------------------------------------------------------- streaming
    def can_stream(self) -> bool:
        """Whether every block can generate frame by frame (every mixer has a state)."""
        return all(block.can_stream() for block in self.blocks)

    def has_constant_state(self) -> bool:
        """Whether streaming keeps a state whose size does not grow with the frames (PoM)."""
        return self.can_stream() and all(getattr(block.mixer, "constant_state", False)
                                         for block in self.blocks if block.keeps_state)

    def default_sampling_mode(self) -> str:
        """``"sequential"`` (frame by frame) where the state stays constant, else ``"joint"``."""
        return "sequential" if self.has_constant_state() else "joint"

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> StateCache:
        """The empty streaming state: one state per block that mixes across frames (keyed by
        the block's index; frame-local blocks read no earlier frame and keep none). ``dtype``
        float64 keeps float64 sums for a float64 model (each mixer's default otherwise)."""
        if not self.can_stream():
            raise ValueError("state: a mixer of this model cannot stream (it has no init_state/step)")
        states = {str(i): block.init_state(batch_size, device=device, dtype=dtype)
                  for i, block in enumerate(self.blocks) if block.keeps_state}
        if self.config.context_frames:
            states[INPUTS] = RecentFrames()
        return StateCache(states)

    # -------------------------------------------------------------- utilities
    def num_tokens(self, frames: int | None = None) -> int:
        """Tokens of a clip of ``frames`` frames (default: the training length)."""
        g = self.config.image_size // self.config.patch_size
        return (frames or self.config.frames) // self.config.temporal_patch * g * g

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        from .io import save_pretrained

        return save_pretrained(self, folder, dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> "VideoDiT":
        from .io import load_pretrained

        return load_pretrained(folder, map_location=map_location, expected=cls)

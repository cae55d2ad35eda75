"""Class-conditional video diffusion transformer whose mixers are block-causal over frames.

A clip ``(B, F, C, H, W)`` is cut into frames (or groups of ``temporal_patch`` frames, one
"latent frame" each), every frame into ``p x p`` patches: ``T = (H/p)(W/p)`` tokens per
frame, ``N = F/temporal_patch * T`` in all, with 2-D sin-cos positions inside the frame plus
a 1-D sin-cos position of the frame. The blocks are the image DiT's adaLN-Zero blocks
(``models/blocks.py``); every token mixer runs block-causal with one block per frame
(``block_size=T``): a frame reads itself and all earlier frames, never a later one, in
O(N) for PoM (no N x N tensor) and with the same mask for attention. With
``frame_local_every=k`` every k-th block (0, k, 2k, ...) mixes inside each frame only.

Two ways to condition on time (``noise_levels``):

* ``"clip"`` (the paper's training): one time per clip, ``t: (B,)``. Frame f's whole
  denoising trajectory then depends only on frames <= f, so frames can be generated one
  after another with, per sampling evaluation and layer, the running state of the finished
  frames (:meth:`VideoDiT.forward` with ``states``), equal to joint denoising.
* ``"frame"`` (diffusion forcing): one time per frame, ``t: (B, F)``; each frame's tokens
  are modulated by their own frame's time. Clean earlier frames (t = 0) condition the
  next ones, so one state per layer, fed from each finished clean frame, is enough, and a
  given clip can be continued.

Call: ``model(x_t, t, y, *, frame_offset=0, states=None, update_states=False)`` ->
``(B, F, C, H, W)``. ``frame_offset`` is the index of the first frame of ``x_t`` (its
temporal position); ``states`` one :class:`~polymixer.nn.MixerState` per block (PoM only)
of the frames before ``x_t``, which every mixer reads; with ``update_states`` the frames of
``x_t`` are added to them (the list is updated in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .blocks import (
    DiTBlock,
    FinalLayer,
    TimestepEmbedding,
    TransformerConfig,
    check_labels,
    init_dit_weights,
    run_blocks,
    sincos_1d,
    sincos_2d,
)
from .dit import check_time
from .registry import config_from_dict, config_to_dict, register_model

__all__ = ["VideoDiTConfig", "VideoDiT", "NOISE_LEVELS"]

ARCHITECTURE = "polymixer.VideoDiT"
NOISE_LEVELS = ("clip", "frame")


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
        frame_local_every: 0 (default: every block is block-causal over frames) or k >= 1:
            blocks 0, k, 2k, ... mix only inside each frame (spatial blocks, no state),
            the others stay block-causal (so k = 2 alternates spatial and causal blocks;
            k = 1 makes the frames independent). Against PoM's dilution of the current
            frame in the mean over all frames so far; streaming stays exact.
        The other fields are :class:`~polymixer.models.blocks.TransformerConfig`'s.
    """

    image_size: int = 32
    frames: int = 8
    temporal_patch: int = 1
    noise_levels: str = "clip"
    frame_local_every: int = 0

    INT_FIELDS = TransformerConfig.INT_FIELDS + ("image_size", "frames", "temporal_patch")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size: {self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.frames % self.temporal_patch != 0:
            raise ValueError(f"frames: {self.frames} is not divisible by temporal_patch={self.temporal_patch}")
        if self.noise_levels not in NOISE_LEVELS:
            raise ValueError(f"noise_levels: expected one of {NOISE_LEVELS}, got {self.noise_levels!r}")
        if self.noise_levels == "frame" and self.temporal_patch != 1:
            raise ValueError("noise_levels: 'frame' needs temporal_patch=1 (one time per token grid)")
        k = self.frame_local_every
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"frame_local_every: expected an int >= 0, got {k!r}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VideoDiTConfig":
        return config_from_dict(data, expected=ARCHITECTURE)


@register_model(ARCHITECTURE, VideoDiTConfig)
class VideoDiT(nn.Module):
    """Video DiT: adaLN-Zero blocks, block-causal over frames, PoM or attention mixers.

    ``forward(x, t, y, *, frame_offset=0, states=None, update_states=False)`` with
    ``x: (B, F, C, H, W)``, ``t: (B,)`` (or ``(B, F)`` for ``noise_levels="frame"``),
    ``y: (B,)`` labels in [0, n_classes] -> ``(B, F, C, H, W)``. See the module docstring.
    """

    kind = "video"

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        if not isinstance(config, VideoDiTConfig):
            raise TypeError(f"config: expected a VideoDiTConfig, got {type(config).__name__}")
        self.config = config
        D, p, tp = config.width, config.patch_size, config.temporal_patch
        self.patch_embed = nn.Conv2d(tp * config.in_channels, D, kernel_size=p, stride=p)
        self.time_embed = TimestepEmbedding(D)
        self.class_embed = nn.Embedding(config.n_classes + 1, D)
        grid = config.image_size // p
        self.register_buffer("pos_embed", sincos_2d(grid, grid, D).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.depth)])
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

    def _check_inputs(self, x, t, y, states) -> torch.Tensor:
        self.check_clip(x)
        B, F = x.shape[:2]
        if self.config.noise_levels == "frame":
            t = check_time(t, (B, F))
        else:
            t = check_time(t, (B,))
        if not isinstance(y, torch.Tensor) or y.shape != (B,):
            raise ValueError(f"y: expected a ({B},) tensor of labels, got shape {tuple(getattr(y, 'shape', ()))}")
        self.check_labels(y)
        if states is not None:
            if self.config.mixer != "pom":
                raise ValueError("states: streaming states need PoM mixers (this model uses attention)")
            if len(states) != len(self.blocks):
                raise ValueError(f"states: expected one state per block ({len(self.blocks)}), got {len(states)}")
            local = self.frame_local_blocks()
            missing = [i for i, s in enumerate(states) if s is None and i not in local]
            if missing:
                raise ValueError(f"states: blocks {missing} mix across frames and need a state (from init_states), "
                                 "got None")
        return t

    # -------------------------------------------------------------- forward
    def positions(self, grid_h: int, grid_w: int, frames: int, frame_offset: int, device, dtype) -> torch.Tensor:
        """Positions ``(1, frames * T, D)``: 2-D inside the frame plus 1-D of the frame index."""
        D = self.config.width
        if grid_h == grid_w == self.config.image_size // self.config.patch_size:
            space = self.pos_embed[0]
        else:
            space = sincos_2d(grid_h, grid_w, D)
        time = sincos_1d(torch.arange(frame_offset, frame_offset + frames), D)
        pos = time[:, None, :].to(space.device) + space[None]
        return pos.reshape(1, frames * grid_h * grid_w, D).to(device=device, dtype=dtype)

    def time_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Training times for clips ``x: (B, F, ...)``: ``(B,)`` or ``(B, F)`` per the config."""
        return (x.shape[0], x.shape[1]) if self.config.noise_levels == "frame" else (x.shape[0],)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, frame_offset: int = 0,
                states: list | None = None, update_states: bool = False) -> torch.Tensor:
        """Predict the velocity (or noise) of clips ``x: (B, F, C, H, W)``; see the class docstring."""
        if not torch.compiler.is_compiling():
            t = self._check_inputs(x, t, y, states)
        B, F, C, H, W = x.shape
        p, tp = self.config.patch_size, self.config.temporal_patch
        G, gh, gw = F // tp, H // p, W // p
        if update_states and G > 1:  # a state update takes one frame (group) at a time
            outs = []
            for g in range(G):
                tg = t[:, g * tp:(g + 1) * tp] if t.dim() == 2 else t
                outs.append(self.forward(x[:, g * tp:(g + 1) * tp], tg, y, frame_offset=frame_offset + g * tp,
                                         states=states, update_states=True))
            return torch.cat(outs, dim=1)
        T = gh * gw
        frames = x.reshape(B * G, tp * C, H, W)
        tokens = self.patch_embed(frames).flatten(2).transpose(1, 2).reshape(B, G * T, -1)
        tokens = tokens + self.positions(gh, gw, G, frame_offset // tp, tokens.device, tokens.dtype)
        c = self.time_embed(t)  # (B, D) or (B, F, D)
        c = c + (self.class_embed(y) if c.dim() == 2 else self.class_embed(y)[:, None])
        local = self.frame_local_blocks()
        if states is None:
            contexts = [{"local_size": T, "grid": (gh, gw)} if i in local else None for i in range(len(self.blocks))]
            tokens = run_blocks(self.blocks, tokens, c, self.gradient_checkpointing, contexts=contexts,
                                block_size=T, grid=(gh, gw))
        else:
            for i, block in enumerate(self.blocks):
                if i in local:  # a spatial block reads no earlier frame: its state stays empty
                    tokens = block(tokens, c, local_size=T, grid=(gh, gw))
                    continue
                tokens, new = block.stream(tokens, c, states[i], block_size=T, update=update_states, grid=(gh, gw))
                if update_states:
                    states[i] = new
        out = self.final(tokens, c)  # (B, G*T, tp*p*p*C)
        out = out.view(B, G, gh, gw, tp, C, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7)
        return out.reshape(B, F, C, H, W)

    def frame_local_blocks(self) -> frozenset:
        """Indices of the blocks that mix inside each frame only (``frame_local_every``)."""
        k = self.config.frame_local_every
        return frozenset(range(0, len(self.blocks), k)) if k else frozenset()

    # -------------------------------------------------------------- streaming
    def init_states(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> list:
        """Zero streaming states, one per block (PoM models only); ``dtype`` float64 keeps
        float64 sums for a float64 model (the mixers' default otherwise). A spatial block
        (``frame_local_every``) reads no earlier frame and gets ``None``: no memory for it."""
        if self.config.mixer != "pom":
            raise ValueError("states: streaming states need PoM mixers (this model uses attention)")
        local = self.frame_local_blocks()
        states = [None if i in local else block.mixer.init_state(batch_size, device=device)
                  for i, block in enumerate(self.blocks)]
        return states if dtype is None else [s if s is None else s.to(dtype=dtype) for s in states]

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

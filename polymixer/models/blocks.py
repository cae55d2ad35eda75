"""Pieces shared by the image and the video diffusion transformers.

Positions (sin-cos), the timestep embedding, adaLN modulation, the adaLN-Zero block with a
pluggable token mixer, and the final layer. A conditioning vector ``cond`` is either one per
sample, ``(B, D)``, or one per group of consecutive tokens, ``(B, G, D)`` with the N tokens
cut in G equal groups (the frames of a video whose frames have their own noise level); the
modulation then varies by group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..conditioning import ClassLabels, check_labels
from ..nn.mixer import IMPLEMENTATIONS
from ..nn.protocol import can_stream
from ..ops.frame_memory import parse_frame_memory
from .mixers import LayerMixer, build_mixer, frame_local_call, parse_mixer_pattern

__all__ = [
    "TransformerConfig", "sincos_1d", "sincos_2d", "token_coordinates", "check_rotary_axes", "TimestepEmbedding", "modulate", "apply_residual_gate",
    "MLP", "DiTBlock", "FinalLayer", "build_blocks", "run_blocks", "check_labels", "check_condition", "labels_of",
]


@dataclass
class TransformerConfig:
    """The fields every diffusion transformer of this package shares (one declaration).

    Args:
        in_channels: channels of the images or frames (1 grey, 3 RGB, 4 for SD-VAE latents).
        patch_size: side of the square patches, one token each.
        width: token width D; depth: number of blocks; heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of D.
        mixer: the token mixer of every block, a pattern (``models/mixers.py``): ``"pom"``,
            ``"attention"``, or per block, repeated over the depth, e.g.
            ``"frame-local pom, pom"`` (every other block mixes inside each frame only).
        pom_degree, pom_expand, pom_variant: PoM's k, e and variant (docs/design.md, section 1).
        pom_heads: 1 for a gate of width F, or the number of gate heads (one scalar per
            head, broadcast over F / pom_heads channels).
        pom_implementation: backward pass of the PoM mixers: ``"fused"`` (default, two
            F-wide tensors kept per mixer), ``"lean"`` (none: the projections are
            recomputed) or ``"autograd"`` (plain PyTorch); the outputs are the same.
        n_classes: number of classes; label ``n_classes`` is the null (unconditional) one.
        qk_norm: RMS-normalise queries and keys (attention only).
        mlp_conv: side of a depthwise convolution over the token grid inside every MLP
            (after its first linear map, on the hidden channels; one frame at a time for
            video), initialised as the identity so a new model starts as without it;
            0 (default) for none, e.g. 3 for the Mix-FFN of SANA.
        pom_rotary: rotary positions inside the PoM mixers (docs/design.md, section 8): 0
            (default) for none, else the number of position axes of the model's tokens, 2
            (row, column) for the image DiT, 3 (frame, row, column) for the video DiT;
            those mixers then run the plain autograd form.
        pom_frame_memory: what a PoM block of a video reads of the earlier frames
            (docs/design.md, section 8): ``"mean"`` (default: the plain mean of every
            earlier frame), ``"decay"`` (a learned decay per channel), ``"gated-decay"`` (a
            decay from each new frame's content) or ``"window:W"`` (the last W frames);
            frame-local blocks keep the mean (they see one frame). Video only.
        attention_window: 0 (default) or W: attention blocks of a video read the last W
            frames only (streaming keeps a rolling key-value cache of them, constant in size).
    """

    in_channels: int = 1
    patch_size: int = 2
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    mixer: str = "pom"
    pom_degree: int = 2
    pom_expand: int = 2
    pom_variant: str = "product"
    pom_heads: int = 1
    pom_implementation: str = "fused"
    n_classes: int = 10
    qk_norm: bool = False
    mlp_conv: int = 0
    pom_rotary: int = 0
    pom_frame_memory: str = "mean"
    attention_window: int = 0

    # fields that change how the network computes, not its weights or its function
    NON_ARCHITECTURAL = ("pom_implementation",)
    INT_FIELDS = ("in_channels", "patch_size", "width", "depth", "heads", "pom_degree", "pom_expand",
                  "pom_heads", "n_classes")

    def __post_init__(self) -> None:
        for name in self.INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
            if value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value}")
        if self.pom_implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"pom_implementation: expected one of {IMPLEMENTATIONS}, got {self.pom_implementation!r}"
            )
        self.layers()  # raises for a bad mixer pattern
        if self.width % self.heads != 0:
            raise ValueError(f"heads: {self.heads} does not divide width={self.width}")
        k = self.mlp_conv
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or (k and k % 2 == 0):
            raise ValueError(f"mlp_conv: expected 0 (none) or an odd kernel size >= 1, got {k!r}")
        r = self.pom_rotary
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 3:
            raise ValueError(f"pom_rotary: expected 0 (none) or the number of position axes (1, 2 or 3), got {r!r}")
        w = self.attention_window
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"attention_window: expected 0 (every earlier frame) or a number of frames >= 1, "
                             f"got {w!r}")
        try:
            parse_frame_memory(self.pom_frame_memory)
        except ValueError as error:
            raise ValueError(f"pom_{error}") from None
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio: expected a positive number, got {self.mlp_ratio!r}")

    def layers(self) -> list[LayerMixer]:
        """The mixer of each block, from the ``mixer`` pattern."""
        return parse_mixer_pattern(self.mixer, self.depth)


# ------------------------------------------------------------------ embeddings
def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos embedding ``(len(positions), dim)`` of float positions."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """2-D sin-cos positions ``(grid_h * grid_w, dim)``, half the channels per axis (row-major)."""
    if dim % 4 != 0:
        raise ValueError(f"width: the 2-D sin-cos positions need a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([sincos_1d(ys.flatten(), dim // 2), sincos_1d(xs.flatten(), dim // 2)], dim=1)


def token_coordinates(grid_h: int, grid_w: int, frames: int | None = None, frame_offset: int = 0,
                      device=None) -> torch.Tensor:
    """Integer coordinates of the tokens, in token order: ``(grid_h * grid_w, 2)`` (row,
    column) of one image, or with ``frames`` ``(frames * grid_h * grid_w, 3)`` (frame, row,
    column) of consecutive frames numbered from ``frame_offset`` (the rotary positions)."""
    rows, cols = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device),
                                indexing="ij")
    space = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    if frames is None:
        return space
    frame = torch.arange(frame_offset, frame_offset + frames, device=device)
    frame = frame.repeat_interleave(grid_h * grid_w)[:, None]
    return torch.cat([frame, space.repeat(frames, 1)], dim=-1)


def check_rotary_axes(config: TransformerConfig, axes: int, what: str) -> None:
    """Raise unless ``config.pom_rotary`` is 0 or ``axes``, the coordinates a model's tokens have."""
    if config.pom_rotary not in (0, axes):
        raise ValueError(f"pom_rotary: the tokens of {what} have {axes} coordinates; expected 0 (off) or {axes}, "
                         f"got {config.pom_rotary}")


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of ``1000 * t`` followed by a two-layer MLP: ``t: (...) -> (..., D)``."""

    def __init__(self, width: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = 1000.0 * t.float()[..., None] * freqs
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1).to(self.mlp[0].weight.dtype))


def _grouped(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``x: (B, N, D)`` and ``v: (B, D)`` or ``(B, G, D)`` that broadcast together."""
    if v.dim() == 2:
        return x, v.unsqueeze(1)
    B, N, D = x.shape
    G = v.shape[1]
    if N % G != 0:
        raise ValueError(f"conditioning: {G} groups do not divide the {N} tokens")
    return x.view(B, G, N // G, D), v.unsqueeze(2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` for ``x: (B, N, D)``, shift and scale ``(B, D)`` or ``(B, G, D)``."""
    xg, shift = _grouped(x, shift)
    return (xg * (1 + scale.view_as(shift)) + shift).view_as(x)


def apply_residual_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``gate * x`` for ``x: (B, N, D)`` and a gate ``(B, D)`` or ``(B, G, D)``."""
    xg, gate = _grouped(x, gate)
    return (xg * gate).view_as(x)


class MLP(nn.Sequential):
    """``Linear(D, hidden) -> [depthwise conv over the grid] -> GELU -> Linear(hidden, D)``.

    ``forward(x, grid)``: ``x: (B, N, D)`` whose tokens are consecutive grids of
    ``grid = (rows, columns)`` tokens (one image, or one frame of a clip). With
    ``conv > 0`` a ``conv x conv`` depthwise convolution (zero padding, identity at start)
    mixes each token's hidden channels with its grid neighbours'.
    """

    def __init__(self, width: int, hidden: int, conv: int = 0):
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.conv = None
        if conv:
            self.conv = nn.Conv2d(hidden, hidden, conv, padding=conv // 2, groups=hidden)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, 0, conv // 2, conv // 2] = 1.0
                self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        h = self[0](x)
        if self.conv is not None:
            if grid is None:
                raise ValueError("grid: an MLP with a convolution needs the token grid (rows, columns)")
            B, N, C = h.shape
            rows, cols = grid
            if N % (rows * cols) != 0:
                raise ValueError(f"grid: {rows}x{cols} grids do not tile the {N} tokens")
            g = h.reshape(-1, rows, cols, C).permute(0, 3, 1, 2)
            h = self.conv(g).permute(0, 2, 3, 1).reshape(B, N, C)
        return self[2](self[1](h))


def init_identity_convs(model: nn.Module) -> None:
    """Reset every MLP convolution of ``model`` to the identity (after a generic init)."""
    for module in model.modules():
        if isinstance(module, MLP) and module.conv is not None:
            k = module.conv.kernel_size[0]
            with torch.no_grad():
                module.conv.weight.zero_()
                module.conv.weight[:, 0, k // 2, k // 2] = 1.0
                module.conv.bias.zero_()


class DiTBlock(nn.Module):
    """adaLN-Zero block: ``x + g1 * mixer(mod(LN(x))) ; x + g2 * MLP(mod(LN(x)))``.

    ``forward(x, cond, *, grid=None, positions=None, **mode)``: ``x: (B, N, D)``, ``cond: (B, D)``
    or ``(B, G, D)``; ``grid`` the (rows, columns) of each image or frame (for the MLP's
    convolution, and a mixer that declares ``uses_grid``); ``positions: (N, A)`` the tokens'
    coordinates, passed to a mixer that declares ``uses_positions`` (rotary PoM); ``mode`` the
    mixer's context mode (``block_size``, ``context_mask``, ...).
    A frame-local block (``layer.frame_local``) mixes inside each block of ``block_size``
    tokens only (the whole sequence without one).

    ``init_state(batch_size)`` and ``step(x, cond, state)``: the streaming form (see
    :mod:`polymixer.nn.protocol`); a frame-local block keeps no state (``None``).
    """

    def __init__(self, config: TransformerConfig, layer: LayerMixer | None = None):
        super().__init__()
        D = config.width
        self.layer = layer if layer is not None else config.layers()[0]
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mixer = build_mixer(self.layer, config)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(round(D * config.mlp_ratio))
        self.mlp = MLP(D, hidden, config.mlp_conv)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def extra_repr(self) -> str:
        return f"layer={str(self.layer)!r}"

    @property
    def uses_positions(self) -> bool:
        """Whether the mixer takes the tokens' ``positions`` (rotary PoM, or a hybrid with one)."""
        return bool(getattr(self.mixer, "uses_positions", False))

    def _layout_kwargs(self, positions, grid) -> dict:
        """What the mixer declares it reads of the tokens' layout: ``positions`` (``uses_positions``,
        rotary PoM) and ``grid`` (``uses_grid``, e.g. a convolution over each frame)."""
        kw = {}
        if self.uses_positions:
            if positions is None:
                raise ValueError(f"positions: the mixer of this block ({self.layer}) takes the tokens' positions "
                                 "(rotary); the model must pass them")
            kw["positions"] = positions
        if getattr(self.mixer, "uses_grid", False):
            if grid is None:
                raise ValueError(f"grid: the mixer of this block ({self.layer}) takes the token grid (rows, "
                                 "columns); the model must pass it")
            kw["grid"] = grid
        return kw

    def forward(self, x: torch.Tensor, cond: torch.Tensor, *, grid: tuple[int, int] | None = None,
                positions: torch.Tensor | None = None, **mode) -> torch.Tensor:
        mode.update(self._layout_kwargs(positions, grid))
        if not self.layer.frame_local:
            return self._residuals(x, cond, lambda h: self.mixer(h, **mode), grid)
        return self._residuals(x, cond, lambda h: frame_local_call(self.mixer, h, mode), grid)

    @property
    def keeps_state(self) -> bool:
        """Whether a stream through this block keeps a state (not for frame-local blocks)."""
        return not self.layer.frame_local

    def can_stream(self) -> bool:
        return self.layer.frame_local or can_stream(self.mixer)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None):
        """The mixer's empty state (``None`` for a frame-local block)."""
        if not self.keeps_state:
            return None
        if not can_stream(self.mixer):
            raise ValueError(f"mixer: {type(self.mixer).__name__} ({self.layer}) cannot stream (it has no "
                             "init_state/step)")
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, cond: torch.Tensor, state, *, grid: tuple[int, int] | None = None,
             positions: torch.Tensor | None = None):
        """The block on the next block of tokens ``x: (B, t, D)`` of a stream (one frame),
        which reads ``state`` and itself (``positions: (t, A)`` the block's coordinates, for
        a mixer that uses them); returns ``(out, new_state)``."""
        kw = self._layout_kwargs(positions, grid)
        if not self.keeps_state:
            return self._residuals(x, cond, lambda h: self.mixer(h, **kw), grid), None
        new = []

        def mix(h):
            y, s = self.mixer.step(h, state, **kw)
            new.append(s)
            return y

        return self._residuals(x, cond, mix, grid), new[0]

    def _residuals(self, x: torch.Tensor, cond: torch.Tensor, mix, grid=None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        x = x + apply_residual_gate(mix(modulate(self.norm1(x), shift1, scale1)), gate1)
        x = x + apply_residual_gate(self.mlp(modulate(self.norm2(x), shift2, scale2), grid), gate2)
        return x


def build_blocks(config: TransformerConfig) -> nn.ModuleList:
    """One :class:`DiTBlock` per entry of ``config.layers()``."""
    return nn.ModuleList([DiTBlock(config, layer) for layer in config.layers()])


class FinalLayer(nn.Module):
    """adaLN final norm and linear map from tokens ``(B, N, D)`` to ``(B, N, out_features)``."""

    def __init__(self, width: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_features)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def run_blocks(blocks: nn.ModuleList, tokens: torch.Tensor, cond: torch.Tensor, checkpointing: bool,
               **mode) -> torch.Tensor:
    """Apply ``blocks`` in order, each with the keyword arguments ``mode`` (``grid``, the
    tokens' ``positions`` and the mixers' context mode); activation checkpointing when
    ``checkpointing`` in training."""
    for block in blocks:
        if checkpointing and block.training and torch.is_grad_enabled():
            tokens = checkpoint(block, tokens, cond, use_reentrant=False, **mode)
        else:
            tokens = block(tokens, cond, **mode)
    return tokens


def init_dit_weights(model: nn.Module) -> None:
    """DiT initialisation: Xavier linears and patch embedding, N(0, 0.02) class and time
    embeddings, zero adaLN modulations and zero output layer (each block starts as the identity).
    Expects ``patch_embed``, ``class_embed``, ``time_embed``, ``blocks`` and ``final``."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    w = model.patch_embed.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.patch_embed.bias)
    nn.init.normal_(model.class_embed.weight, std=0.02)
    for layer in (model.time_embed.mlp[0], model.time_embed.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    init_identity_convs(model)
    for block in model.blocks:
        nn.init.zeros_(block.modulation[-1].weight)
        nn.init.zeros_(block.modulation[-1].bias)
    for p in (model.final.modulation[-1].weight, model.final.modulation[-1].bias,
              model.final.linear.weight, model.final.linear.bias):
        nn.init.zeros_(p)


def check_condition(y, n_classes: int, batch: int) -> None:
    """Raise unless ``y`` conditions ``batch`` samples of a model of ``n_classes`` classes:
    :class:`~polymixer.conditioning.ClassLabels`, or a ``(batch,)`` tensor of labels."""
    if isinstance(y, ClassLabels):
        if y.n_classes != n_classes:
            raise ValueError(f"y: labels of {y.n_classes} classes given to a model of {n_classes}")
        labels = y.labels
    else:
        labels = y
        if not isinstance(y, torch.Tensor) or y.shape != (batch,):
            raise ValueError(f"y: expected ClassLabels or a ({batch},) tensor of labels, got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        check_labels(y, n_classes)
    if labels.shape != (batch,):
        raise ValueError(f"y: expected {batch} labels (one per sample), got {labels.shape[0]}")


def labels_of(y) -> torch.Tensor:
    """The label tensor of ``y`` (ClassLabels or a tensor of labels)."""
    return y.labels if isinstance(y, ClassLabels) else y

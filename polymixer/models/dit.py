"""Class-conditional diffusion transformer (DiT, Peebles & Xie 2023) with a pluggable mixer.

Every block is adaLN-Zero: the conditioning vector ``cond = t_emb + y_emb`` gives a shift,
scale and gate for the token mixer and for the MLP, zero-initialised so each block starts
as the identity. The token mixer is either the Polynomial Mixer (``mixer="pom"``) or
multi-head softmax attention (``mixer="attention"``); nothing else differs, so the two are
compared on the same work (docs/design.md, section 7). The blocks are shared with the video DiT
(``models/blocks.py``).

The network is called as ``model(x_t, t, y, **context)``:
    x_t: (B, C, H, W) noisy images or latents, H and W divisible by the patch size
    t:   (B,) float times in [0, 1] (flow-matching time, or DDPM step / num_steps), or a
         scalar tensor for the whole batch
    y:   the condition: :class:`~polymixer.conditioning.ClassLabels` (or a (B,) int64 tensor of
         labels in [0, n_classes]; ``n_classes`` is the null label)
    context: keyword arguments passed to every token mixer (e.g. ``context_mask``, a
         (B, N) padding mask over the tokens)
returning a tensor of the shape of ``x_t`` (a velocity or a noise prediction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
    sincos_2d,
    token_coordinates,
)
from ..conditioning import ClassLabels, as_condition
from ..ops.plan import compiling
from .registry import config_from_dict, config_to_dict, register_model

__all__ = ["DiTConfig", "DiT", "check_time"]

ARCHITECTURE = "polymixer.DiT"


@dataclass
class DiTConfig(TransformerConfig):
    """Hyper-parameters of a :class:`DiT`; serialised as ``config.json`` next to the weights.

    Args:
        image_size: side of the training images (or latents); the model also takes any
            other size whose sides are divisible by ``patch_size``.
        The other fields are those of :class:`~polymixer.models.blocks.TransformerConfig`
        (channels, patch size, width, depth, heads, MLP ratio, mixer and its options, classes).
    """

    image_size: int = 32

    INT_FIELDS = TransformerConfig.INT_FIELDS + ("image_size",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size: {self.image_size} is not divisible by patch_size={self.patch_size}"
            )

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DiTConfig":
        return config_from_dict(data, expected=ARCHITECTURE)


def check_time(t, leading: tuple[int, ...]) -> torch.Tensor:
    """``t`` as a float tensor of shape ``leading``: it may be a scalar tensor or have any
    shape that broadcasts to ``leading`` (e.g. ``(B,)`` or ``(B, 1)`` for ``(B, F)``)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"t: expected a tensor of times broadcastable to {leading}, got {type(t).__name__}")
    shape = tuple(t.shape)
    if len(shape) == 1 and len(leading) > 1 and shape == leading[:1]:
        t = t.view(*shape, *([1] * (len(leading) - 1)))  # (B,) per sample
    try:
        return t.expand(leading)
    except RuntimeError:
        raise ValueError(f"t: expected times broadcastable to {leading}, got shape {shape}") from None


# ------------------------------------------------------------------ the network
@register_model(ARCHITECTURE, DiTConfig)
class DiT(nn.Module):
    """Class-conditional DiT with adaLN-Zero blocks and a PoM or attention token mixer.

    ``forward(x, t, y, **context)``: ``x: (B, C, H, W)``, ``t: (B,)`` float in [0, 1] (or a
    scalar tensor), ``y: (B,)`` int labels in [0, n_classes] (``n_classes`` = null); the
    keyword arguments go to every token mixer -> ``(B, C, H, W)``.
    """

    kind = "image"

    def __init__(self, config: DiTConfig):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise TypeError(f"config: expected a DiTConfig, got {type(config).__name__}")
        self.config = config
        D, p = config.width, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, D, kernel_size=p, stride=p)
        self.time_embed = TimestepEmbedding(D)
        self.class_embed = nn.Embedding(config.n_classes + 1, D)
        grid = config.image_size // p
        self.register_buffer("pos_embed", sincos_2d(grid, grid, D).unsqueeze(0), persistent=False)
        check_rotary_axes(config, 2, "an image (row, column)")
        if config.pom_frame_memory != "mean":
            raise ValueError(f"pom_frame_memory: an image is one frame; expected 'mean', got "
                             f"{config.pom_frame_memory!r} (the option is for the video DiT)")
        self.blocks = build_blocks(config)
        self.uses_positions = any(block.uses_positions for block in self.blocks)
        self.final = FinalLayer(D, p * p * config.in_channels)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN and output."""
        init_dit_weights(self)

    # -------------------------------------------------------------- checks
    def check_image_size(self, height: int, width: int) -> None:
        """Raise ValueError unless an image of ``height x width`` can be patchified."""
        p = self.config.patch_size
        if height % p != 0 or width % p != 0:
            raise ValueError(
                f"image size: {height}x{width} is not divisible by the model's patch size {p}"
            )

    def condition(self, labels) -> ClassLabels:
        """Class labels ``(B,)`` (a tensor or a list) as this model's conditioning object."""
        return as_condition(labels, self.config.n_classes)

    def check_labels(self, y: torch.Tensor) -> None:
        """Raise ValueError for labels outside [0, n_classes] (n_classes is the null label)."""
        check_labels(y, self.config.n_classes)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a (B, C, H, W) tensor, got {shape}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected {self.config.in_channels} channels, got {x.shape[1]}")
        self.check_image_size(x.shape[2], x.shape[3])
        t = check_time(t, (x.shape[0],))
        check_condition(y, self.config.n_classes, x.shape[0])
        return t

    # -------------------------------------------------------------- forward
    def positions(self, grid_h: int, grid_w: int, device, dtype) -> torch.Tensor:
        """Sin-cos positions ``(1, grid_h * grid_w, D)`` (cached for the training size)."""
        if self.pos_embed.shape[1] == grid_h * grid_w and grid_h == grid_w == self.config.image_size // self.config.patch_size:
            return self.pos_embed.to(device=device, dtype=dtype)
        return sincos_2d(grid_h, grid_w, self.config.width).unsqueeze(0).to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **context) -> torch.Tensor:
        """Predict the velocity (or noise) of ``x: (B, C, H, W)`` at times ``t: (B,)`` for labels ``y: (B,)``."""
        if not compiling():
            t = self._check_inputs(x, t, y)
        elif t.dim() == 0:
            t = t.expand(x.shape[0])
        B, C, H, W = x.shape
        p = self.config.patch_size
        gh, gw = H // p, W // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self.positions(gh, gw, tokens.device, tokens.dtype)
        cond = self.time_embed(t) + self.class_embed(labels_of(y))  # (B, D)
        if self.uses_positions:  # rotary mixers: the (row, column) of each token
            context = {**context, "positions": token_coordinates(gh, gw, device=tokens.device)}
        tokens = run_blocks(self.blocks, tokens, cond, self.gradient_checkpointing, grid=(gh, gw), **context)
        out = self.final(tokens, cond)  # (B, N, p*p*C)
        out = out.view(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(B, C, H, W)

    # -------------------------------------------------------------- utilities
    def time_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """The shape of the training times for samples ``x``: one per image, ``(B,)``."""
        return (x.shape[0],)

    def num_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """Tokens per image of ``height x width`` (default: the training size)."""
        p, size = self.config.patch_size, self.config.image_size
        return ((height or size) // p) * ((width or size) // p)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (atomically);
        ``dtype`` optionally stores the weights in a smaller float type."""
        from .io import save_pretrained

        return save_pretrained(self, folder, dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> "DiT":
        """Build a model from a folder written by :meth:`save_pretrained`."""
        from .io import load_pretrained

        return load_pretrained(folder, map_location=map_location, expected=cls)

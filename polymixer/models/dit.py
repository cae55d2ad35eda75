"""Class-conditional diffusion transformer (DiT, Peebles & Xie 2023) with a pluggable mixer.

Every block is adaLN-Zero: the conditioning vector ``c = t_emb + y_emb`` gives a shift,
scale and gate for the token mixer and for the MLP, zero-initialised so each block starts
as the identity. The token mixer is either the Polynomial Mixer (``mixer="pom"``) or
multi-head softmax attention (``mixer="attention"``); nothing else differs, so the two are
compared on the same work (spec section 7).

The network is called as ``model(x_t, t, y)``:
    x_t: (B, C, H, W) noisy images or latents, H and W divisible by the patch size
    t:   (B,) float times in [0, 1] (flow-matching time, or DDPM step / num_steps)
    y:   (B,) int64 class labels in [0, n_classes]; ``n_classes`` is the null label
returning a tensor of the shape of ``x_t`` (a velocity or a noise prediction).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..nn import MultiHeadAttention, PolynomialMixer
from ..nn.mixer import IMPLEMENTATIONS

__all__ = ["DiTConfig", "DiT", "MIXERS"]

MIXERS = ("pom", "attention")
ARCHITECTURE = "polymixer.DiT"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class DiTConfig:
    """Hyper-parameters of a :class:`DiT`; serialised as ``config.json`` next to the weights.

    Args:
        image_size: side of the training images (or latents); the model also takes any
            other size whose sides are divisible by ``patch_size``.
        in_channels: channels of the images (1 grey, 3 RGB, 4 for SD-VAE latents).
        patch_size: side of the square patches, one token each.
        width: token width D; depth: number of blocks; heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of D.
        mixer: ``"pom"`` or ``"attention"``.
        pom_degree, pom_expand, pom_variant: PoM's k, e and variant (spec section 1).
        pom_heads: 1 for a gate of width F, or the number of gate heads (one scalar per
            head, broadcast over F / pom_heads channels).
        pom_implementation: backward pass of the PoM mixers: ``"fused"`` (default, two
            F-wide tensors kept per mixer), ``"lean"`` (none: the projections are
            recomputed) or ``"autograd"`` (plain PyTorch); the outputs are the same.
        n_classes: number of classes; label ``n_classes`` is the null (unconditional) one.
        qk_norm: RMS-normalise queries and keys (attention only).
    """

    image_size: int = 32
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

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "patch_size", "width", "depth", "heads",
                     "pom_degree", "pom_expand", "pom_heads", "n_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
            if value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value}")
        if self.pom_implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"pom_implementation: expected one of {IMPLEMENTATIONS}, got {self.pom_implementation!r}"
            )
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer: expected one of {MIXERS}, got {self.mixer!r}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size: {self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.width % self.heads != 0:
            raise ValueError(f"heads: {self.heads} does not divide width={self.width}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio: expected a positive number, got {self.mlp_ratio!r}")

    def to_dict(self) -> dict:
        return {"architecture": ARCHITECTURE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "DiTConfig":
        if not isinstance(data, dict):
            raise TypeError(f"config: expected a dict, got {type(data).__name__}")
        data = dict(data)
        arch = data.pop("architecture", ARCHITECTURE)
        if arch != ARCHITECTURE:
            raise ValueError(f"config: architecture {arch!r} is not {ARCHITECTURE!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown DiT config keys {unknown}")
        return cls(**data)


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


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of ``1000 * t`` followed by a two-layer MLP: ``(B,) -> (B, D)``."""

    def __init__(self, width: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1).to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``x: (B, N, D)``, shift and scale ``(B, D)``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """adaLN-Zero block: ``x + g1 * mixer(mod(LN(x))) ; x + g2 * MLP(mod(LN(x)))``. x: (B, N, D)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        D = config.width
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        if config.mixer == "pom":
            self.mixer = PolynomialMixer(D, degree=config.pom_degree, expand=config.pom_expand,
                                         variant=config.pom_variant, heads=config.pom_heads,
                                         implementation=config.pom_implementation)
        else:
            self.mixer = MultiHeadAttention(D, heads=config.heads, qk_norm=config.qk_norm)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(round(D * config.mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.mixer(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """adaLN final norm and linear map from tokens (B, N, D) to patches (B, N, p*p*C)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        D, p = config.width, config.patch_size
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, p * p * config.in_channels)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ------------------------------------------------------------------ the network
class DiT(nn.Module):
    """Class-conditional DiT with adaLN-Zero blocks and a PoM or attention token mixer.

    ``forward(x, t, y)``: ``x: (B, C, H, W)``, ``t: (B,)`` float in [0, 1],
    ``y: (B,)`` int labels in [0, n_classes] (``n_classes`` = null) -> ``(B, C, H, W)``.
    """

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
        self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.depth)])
        self.final = FinalLayer(config)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    # -------------------------------------------------------------- checks
    def check_image_size(self, height: int, width: int) -> None:
        """Raise ValueError unless an image of ``height x width`` can be patchified."""
        p = self.config.patch_size
        if height % p != 0 or width % p != 0:
            raise ValueError(
                f"image size: {height}x{width} is not divisible by the model's patch size {p}"
            )

    def check_labels(self, y: torch.Tensor) -> None:
        """Raise ValueError for labels outside [0, n_classes] (n_classes is the null label)."""
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y: expected a torch.Tensor of class labels, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"y: expected integer class labels, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.config.n_classes):
            bad = y[(y < 0) | (y > self.config.n_classes)][0].item()
            raise ValueError(
                f"y: unknown class index {bad}; expected 0..{self.config.n_classes - 1} "
                f"(or {self.config.n_classes}, the null label)"
            )

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a (B, C, H, W) tensor, got {shape}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected {self.config.in_channels} channels, got {x.shape[1]}")
        self.check_image_size(x.shape[2], x.shape[3])
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            raise ValueError(f"t: expected a ({x.shape[0]},) tensor of times, got {getattr(t, 'shape', t)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y: expected a ({x.shape[0]},) tensor of labels, got shape {tuple(y.shape)}")
        self.check_labels(y)

    # -------------------------------------------------------------- forward
    def positions(self, grid_h: int, grid_w: int, device, dtype) -> torch.Tensor:
        """Sin-cos positions ``(1, grid_h * grid_w, D)`` (cached for the training size)."""
        if self.pos_embed.shape[1] == grid_h * grid_w and grid_h == grid_w == self.config.image_size // self.config.patch_size:
            return self.pos_embed.to(device=device, dtype=dtype)
        return sincos_2d(grid_h, grid_w, self.config.width).unsqueeze(0).to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict the velocity (or noise) of ``x: (B, C, H, W)`` at times ``t: (B,)`` for labels ``y: (B,)``."""
        if not torch.compiler.is_compiling():
            self._check_inputs(x, t, y)
        B, C, H, W = x.shape
        p = self.config.patch_size
        gh, gw = H // p, W // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self.positions(gh, gw, tokens.device, tokens.dtype)
        c = self.time_embed(t) + self.class_embed(y)  # (B, D)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, use_reentrant=False)
            else:
                tokens = block(tokens, c)
        out = self.final(tokens, c)  # (B, N, p*p*C)
        out = out.view(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(B, C, H, W)

    # -------------------------------------------------------------- utilities
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

        return load_pretrained(folder, map_location=map_location)


def config_to_json(config: DiTConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)

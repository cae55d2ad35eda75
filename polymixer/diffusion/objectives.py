"""Training objectives, independent of the network: flow matching and DDPM.

Both call the network only as ``model(x_t, t, y, **context)`` with ``t`` float in [0, 1]
of shape ``time_shape``, broadcastable to the samples' leading dimensions: ``(B,)`` by
default (one noise level per sample), ``(B, F)`` for one level per frame of clips
``x_0: (B, F, C, H, W)`` (diffusion forcing).

Flow matching (rectified flow): ``x_t = (1 - t) x_0 + t eps``, target ``v = eps - x_0``.
DDPM: discrete steps k = 0..T-1 of a linear beta schedule,
``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps``, target ``eps``, network time ``k / T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["FlowMatching", "DDPM", "time_shift", "resolution_shift", "make_objective", "OBJECTIVES"]

Model = Callable[..., torch.Tensor]


def _time_shape(x0: torch.Tensor, time_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if time_shape is None:
        return (x0.shape[0],)
    time_shape = tuple(time_shape)
    if not 1 <= len(time_shape) < x0.dim() or time_shape != tuple(x0.shape[:len(time_shape)]):
        raise ValueError(f"time_shape: expected leading dimensions of the samples {tuple(x0.shape)}, got {time_shape}")
    return time_shape


def _expand_time(t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``t`` with trailing singleton dimensions so it broadcasts against ``x0``."""
    return t.view(*t.shape, *([1] * (x0.dim() - t.dim())))


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution-dependent time shift ``t' = s t / (1 + (s - 1) t)`` (s > 1: noisier)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(height: int, width: int, base: int = 32 * 32) -> float:
    """The shift ``s = sqrt(H * W / base)`` for images (or latents) of ``height x width``."""
    return math.sqrt(height * width / base)


@dataclass
class FlowMatching:
    """Rectified-flow objective with velocity prediction.

    Args:
        time_sampling: ``"logit_normal"`` (t = sigmoid(N(mean, std))) or ``"uniform"``.
        logit_mean, logit_std: parameters of the logit-normal density.
        shift: time shift s applied to the sampled t (1 = none).
    """

    time_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    name: str = "flow"

    def __post_init__(self) -> None:
        if self.time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"time_sampling: expected 'logit_normal' or 'uniform', got {self.time_sampling!r}")
        if not self.shift > 0:
            raise ValueError(f"shift: expected a positive number, got {self.shift!r}")

    def sample_time(self, shape: int | tuple[int, ...], device=None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times of ``shape`` (an int is a batch size) in [0, 1]."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if self.time_sampling == "uniform":
            t = torch.rand(shape, device=device, generator=generator)
        else:
            z = torch.randn(shape, device=device, generator=generator)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return time_shift(t, self.shift)

    def loss(self, model: Model, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             *, time_shape: tuple[int, ...] | None = None, **context) -> torch.Tensor:
        """Mean squared velocity error for clean data ``x0: (B, ...)`` and labels ``y: (B,)``.

        ``time_shape``: ``(B,)`` (default) or e.g. ``(B, F)`` for one time per frame;
        ``context`` goes to the model call unchanged."""
        t = self.sample_time(_time_shape(x0, time_shape), x0.device, generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        return self.loss_at(model, x0, y, t, eps, **context)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - t) x0 + t eps``: ``x0`` noised to the level ``t`` (a float, or a tensor
        of leading dimensions of ``x0``)."""
        if not isinstance(t, torch.Tensor):
            t = torch.full((x0.shape[0],), float(t), device=x0.device, dtype=x0.dtype)
        tb = _expand_time(t.to(x0.dtype), x0)
        return (1 - tb) * x0 + tb * eps

    def loss_at(self, model: Model, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | float,
                eps: torch.Tensor, loss_frames: slice | None = None, **context) -> torch.Tensor:
        """The same loss at given noise levels ``t`` (a float, or a tensor of leading
        dimensions of ``x0``: ``(B,)`` or ``(B, F)``) and given noise ``eps`` (shaped like
        ``x0``): deterministic, for held-out losses by noise level. No time shift is applied.
        ``loss_frames``: clips ``(B, F, ...)``: the loss of these frames only (the model
        still reads the whole clip)."""
        if eps.shape != x0.shape:
            raise ValueError(f"eps: expected the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
        if not isinstance(t, torch.Tensor):
            t = torch.full((x0.shape[0],), float(t), device=x0.device, dtype=x0.dtype)
        _time_shape(x0, t.shape)
        tb = _expand_time(t, x0)
        x_t = (1 - tb) * x0 + tb * eps
        pred = model(x_t, t, y, **context)
        target = eps - x0
        if loss_frames is not None:
            if x0.dim() != 5:
                raise ValueError(f"loss_frames: for clips (B, F, C, H, W), got x0 of shape {tuple(x0.shape)}")
            pred, target = pred[:, loss_frames], target[:, loss_frames]
        return F.mse_loss(pred.float(), target.float())


@dataclass
class DDPM:
    """DDPM with epsilon prediction on a linear beta schedule of ``num_steps`` steps."""

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    name: str = "ddpm"

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise ValueError(f"num_steps: expected an int >= 2, got {self.num_steps!r}")
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # (T,) float64

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar_k) x0 + sqrt(1 - abar_k) eps`` at the step ``k = round(t * num_steps)``
        (clamped to the schedule; the network's time is ``k / num_steps``)."""
        if not isinstance(t, torch.Tensor):
            t = torch.full((x0.shape[0],), float(t), device=x0.device, dtype=torch.float64)
        k = (t.double() * self.num_steps).round().long().clamp(0, self.num_steps - 1)
        abar = _expand_time(self.alphas_cumprod.to(x0.device)[k].to(x0.dtype), x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def loss(self, model: Model, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             *, time_shape: tuple[int, ...] | None = None, **context) -> torch.Tensor:
        """Mean squared noise error for clean data ``x0: (B, ...)`` and labels ``y: (B,)``
        (``time_shape`` and ``context`` as for :meth:`FlowMatching.loss`)."""
        shape = _time_shape(x0, time_shape)
        k = torch.randint(0, self.num_steps, shape, device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        abar = _expand_time(self.alphas_cumprod.to(x0.device)[k].to(x0.dtype), x0)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        pred = model(x_t, k.to(x0.dtype) / self.num_steps, y, **context)
        return F.mse_loss(pred.float(), eps.float())


OBJECTIVES = ("flow", "ddpm")


def make_objective(name: str, **kwargs) -> FlowMatching | DDPM:
    if name == "flow":
        return FlowMatching(**kwargs)
    if name == "ddpm":
        return DDPM(**kwargs)
    raise ValueError(f"objective: expected one of {OBJECTIVES}, got {name!r}")

"""Samplers: Euler and Heun for flow matching, DDIM for DDPM; classifier-free guidance.

A sampler knows nothing about the network beyond the call ``model(x_t, t, cond)``
(``x_t: (B, ...)`` images or clips, ``t: (B,)`` float in [0, 1], one time per sample, which
the network broadcasts over the samples' other leading dimensions, ``cond`` a conditioning
object of B rows, :mod:`polymixer.conditioning`, which owns its null value for guidance).
Context a network needs beyond that (masks) is bound into the callable by the caller,
e.g. ``functools.partial(model, context_mask=...)``. With ``indexed=True`` a sampler also
says which of its network evaluations a call is, ``model(x_t, t, y, evaluation=k)`` with
k = 0, 1, ... in order: what a frame-by-frame video sampler keys its states by.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from ..conditioning import Condition
from .objectives import DDPM, FlowMatching, time_shift

__all__ = ["classifier_free_guidance", "euler", "heun", "ddim", "sample", "SAMPLERS", "flow_times"]

Model = Callable[..., torch.Tensor]
SAMPLERS = {"flow": ("euler", "heun"), "ddpm": ("ddim",)}


def classifier_free_guidance(model: Model, scale: float) -> Model:
    """``u + w (c - u)`` with c the conditional and u the unconditional prediction (the
    condition's ``null()``).

    Both are computed in one batched call. ``scale = 1`` returns the plain conditional
    model, ``scale = 0`` the unconditional one.
    """
    if scale == 1.0:
        return model

    def guided(x: torch.Tensor, t: torch.Tensor, cond, **index) -> torch.Tensor:
        _check_condition(cond)
        if scale == 0.0:
            return model(x, t, cond.null(), **index)
        out = model(torch.cat([x, x]), torch.cat([t, t]), cond.cat(cond.null()), **index)
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided


def flow_times(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """The ``steps + 1`` times from 1 (noise) to 0 (data), time-shifted by ``shift``."""
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64), shift)


def _check_condition(cond) -> None:
    if not isinstance(cond, Condition):
        raise TypeError(f"cond: guidance needs a conditioning object with a null value (e.g. "
                        f"polymixer.conditioning.ClassLabels(labels, n_classes)), got {type(cond).__name__}")


def _index(indexed: bool, k: int) -> dict:
    return {"evaluation": k} if indexed else {}


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")


@torch.no_grad()
def euler(model: Model, noise: torch.Tensor, y: torch.Tensor, steps: int, shift: float = 1.0,
          progress: bool = False, indexed: bool = False) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from t = 1 (``noise: (B, C, H, W)``) to t = 0 with Euler steps."""
    _check_steps(steps)
    ts = flow_times(steps, shift, noise.device)
    x = noise
    for i in tqdm(range(steps), desc="euler", disable=not progress, leave=False):
        t = torch.full((x.shape[0],), float(ts[i]), device=x.device, dtype=x.dtype)
        x = x + (ts[i + 1] - ts[i]).item() * model(x, t, y, **_index(indexed, i))
    return x


@torch.no_grad()
def heun(model: Model, noise: torch.Tensor, y: torch.Tensor, steps: int, shift: float = 1.0,
         progress: bool = False, indexed: bool = False) -> torch.Tensor:
    """Heun's second-order method (Euler on the last step, where t reaches 0): 2 steps - 1 calls."""
    _check_steps(steps)
    ts = flow_times(steps, shift, noise.device)
    x = noise
    B = x.shape[0]
    for i in tqdm(range(steps), desc="heun", disable=not progress, leave=False):
        t0, t1 = float(ts[i]), float(ts[i + 1])
        dt = t1 - t0
        v0 = model(x, torch.full((B,), t0, device=x.device, dtype=x.dtype), y, **_index(indexed, 2 * i))
        x_euler = x + dt * v0
        if i == steps - 1:
            x = x_euler
        else:
            v1 = model(x_euler, torch.full((B,), t1, device=x.device, dtype=x.dtype), y, **_index(indexed, 2 * i + 1))
            x = x + dt * 0.5 * (v0 + v1)
    return x


@torch.no_grad()
def ddim(model: Model, noise: torch.Tensor, y: torch.Tensor, steps: int, ddpm: DDPM, eta: float = 0.0,
         clip: float | None = None, generator: torch.Generator | None = None, progress: bool = False,
         indexed: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021) on ``steps`` evenly spaced DDPM steps; eta = 0 is deterministic.

    ``clip`` clamps the predicted x_0 to [-clip, clip] (e.g. 1 for pixels in [-1, 1]).
    """
    _check_steps(steps)
    T = ddpm.num_steps
    if steps > T:
        raise ValueError(f"steps: at most the DDPM's {T} steps, got {steps}")
    abar = ddpm.alphas_cumprod.to(noise.device)
    ks = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    x = noise
    B = x.shape[0]
    for i in tqdm(range(steps), desc="ddim", disable=not progress, leave=False):
        k = ks[i]
        a = abar[k].item()
        a_prev = abar[ks[i + 1]].item() if i + 1 < steps else 1.0
        eps = model(x, torch.full((B,), k / T, device=x.device, dtype=x.dtype), y, **_index(indexed, i))
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return x


def sample(
    model: Model,
    noise: torch.Tensor,
    y: torch.Tensor,
    *,
    objective: FlowMatching | DDPM,
    sampler: str | None = None,
    steps: int = 50,
    cfg_scale: float = 1.0,
    shift: float = 1.0,
    clip: float | None = None,
    progress: bool = False,
    indexed: bool = False,
) -> torch.Tensor:
    """Sample from ``noise: (B, C, H, W)`` for the condition ``y`` (B rows, e.g.
    :class:`~polymixer.conditioning.ClassLabels`) with classifier-free guidance.

    ``sampler``: ``"euler"`` or ``"heun"`` for flow matching (default euler), ``"ddim"``
    for DDPM (default). Guidance (``cfg_scale != 1``) uses the condition's ``null()``.
    ``shift``: time shift of the flow sampler's grid.
    ``indexed``: call ``model(x, t, y, evaluation=k)`` (see the module docstring).
    """
    kind = "flow" if isinstance(objective, FlowMatching) else "ddpm" if isinstance(objective, DDPM) else None
    if kind is None:
        raise TypeError(f"objective: expected FlowMatching or DDPM, got {type(objective).__name__}")
    sampler = sampler or SAMPLERS[kind][0]
    if sampler not in SAMPLERS[kind]:
        raise ValueError(f"sampler: {sampler!r} does not go with the {kind} objective; expected one of {SAMPLERS[kind]}")
    _check_steps(steps)
    if cfg_scale != 1.0:
        _check_condition(y)
    rows = y.batch_size if isinstance(y, Condition) else y.shape[0] if isinstance(y, torch.Tensor) else None
    if rows != noise.shape[0]:
        raise ValueError(f"y: expected a condition of {noise.shape[0]} rows (one per sample), got {rows}")
    fn = classifier_free_guidance(model, cfg_scale) if cfg_scale != 1.0 else model
    if sampler == "euler":
        return euler(fn, noise, y, steps, shift, progress, indexed)
    if sampler == "heun":
        return heun(fn, noise, y, steps, shift, progress, indexed)
    return ddim(fn, noise, y, steps, objective, clip=clip, progress=progress, indexed=indexed)

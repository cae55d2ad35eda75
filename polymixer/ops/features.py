"""Polynomial features of tokens: the two variants of the spec, section 1.

Both functions are element-wise over the last dimension and work on any leading
shape, e.g. ``u: (B, N, k*E)`` for the product variant or ``u: (B, N, E)`` for the
power variant (``E = expand * dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["product_features", "power_activation", "power_features"]


def product_features(u: torch.Tensor, degree: int) -> torch.Tensor:
    """Product polynomial of the 2024 paper.

    ``u: (..., degree*E)`` is split in ``degree`` chunks ``u_1..u_k`` of width E;
    ``g_i = GELU(u_i)`` (exact erf GELU), ``p_1 = g_1``, ``p_i = p_{i-1} * g_i`` and the
    result is ``concat(p_1, ..., p_k)``, of the same shape as ``u``.
    """
    if u.shape[-1] % degree != 0:
        raise ValueError(
            f"u: last dimension {u.shape[-1]} is not divisible by degree={degree}"
        )
    g = F.gelu(u)
    if degree == 1:
        return g
    chunks = g.chunk(degree, dim=-1)
    terms = [chunks[0]]
    running = chunks[0]
    for chunk in chunks[1:]:
        running = running * chunk
        terms.append(running)
    return torch.cat(terms, dim=-1)


def power_activation(z: torch.Tensor) -> torch.Tensor:
    """``clamp(leaky_relu(z, 0.01), -0.1, 6)``: the bounded activation of the power variant."""
    return F.leaky_relu(z, 0.01).clamp(-0.1, 6.0)


def power_features(u: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
    """Power series of the 2026 paper: ``h = sum_{i=1..k} a_i * u**i``.

    ``u: (..., E)`` (already activated), ``coeff: (E, k)`` with column ``i-1`` holding
    ``a_i``. Evaluated with Horner's rule: ``u * (a_1 + u * (a_2 + ...))``.
    """
    if coeff.dim() != 2 or coeff.shape[0] != u.shape[-1]:
        raise ValueError(
            f"coeff: expected shape ({u.shape[-1]}, degree), got {tuple(coeff.shape)}"
        )
    coeff = coeff.to(u.dtype)
    degree = coeff.shape[1]
    acc = coeff[:, degree - 1].expand_as(u)
    for i in range(degree - 2, -1, -1):
        acc = coeff[:, i] + u * acc
    return u * acc

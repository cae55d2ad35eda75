"""The per-token maths of the Polynomial Mixer (docs/design.md, section 1): the polynomial
features ``h`` of the context tokens and the gate ``s`` of the queries, in the form every
execution path uses (autograd, the chunked passes, streaming; derivatives in
:mod:`.derivatives`). With the mean ``H`` of the features over each query's context set,
the mixer is ``y = W_o (s(W_s x + b_s) * H) + b_o`` (:mod:`.naive`).

Element-wise over the last dimension, on any leading shape: ``u: (..., k*E)`` (product) or
``u: (..., E)`` (power), ``E = expand * dim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import MixerSpec

__all__ = ["product_features", "power_activation", "power_features", "features", "gate", "apply_gate"]


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


def features(spec: MixerSpec, u: torch.Tensor, coeff: torch.Tensor | None) -> torch.Tensor:
    """Polynomial features ``h: (..., F)`` of the feature projection's output ``u = W_h c + b_h``.

    float16 is computed in float32: degree-k products overflow float16's range first.
    """
    if u.dtype == torch.float16:
        u = u.float()
    if spec.variant == "product":
        return product_features(u, spec.degree)
    return power_features(power_activation(u), coeff)


def gate(variant: str, z: torch.Tensor) -> torch.Tensor:
    """The gate ``s(z)`` of the gate projection's output ``z = W_s x + b_s``: sigmoid
    (product) or hard sigmoid ``clamp(z / 6 + 1/2, 0, 1)`` (power).

    The hard sigmoid is ATen's one-pass kernel, written out in float64 (whose backward
    would otherwise use a float32 constant 1/6, and CUDA's kernel rounds differently).
    """
    if variant == "product":
        return torch.sigmoid(z)
    if z.dtype == torch.float64:
        return (z / 6.0 + 0.5).clamp(0.0, 1.0)
    return F.hardsigmoid(z)


def apply_gate(s: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``s * state`` with the head broadcast: ``s: (..., G)``, ``state: (..., F)`` -> (..., F).

    G = F: element-wise. G < F (heads): head g's scalar multiplies its F/G consecutive
    channels. The leading dimensions broadcast (e.g. ``state: (B, 1, F)`` shared by every
    query). Linear in ``state``, so it is also its own adjoint: the gradient reaching the
    state is ``apply_gate(s, d_gated)``.
    """
    heads, width = s.shape[-1], state.shape[-1]
    if heads == width:
        return s * state
    return (s.unsqueeze(-1) * state.unflatten(-1, (heads, -1))).flatten(-2)



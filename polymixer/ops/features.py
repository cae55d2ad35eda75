"""The element-wise maths of the mixer (spec section 1): features, gates, the gate's head
broadcast, and their derivatives. One definition each, used by every execution path
(plain autograd, the fused/lean passes, streaming).

All functions are element-wise over the last dimension and work on any leading shape,
e.g. ``u: (B, N, k*E)`` for the product variant or ``u: (B, N, E)`` for the power variant
(``E = expand * dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import MixerSpec

__all__ = [
    "product_features", "power_activation", "power_features", "features",
    "gate", "apply_gate", "gate_input_grad", "gate_backward", "feature_backward",
]


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


def gate_input_grad(d_gated: torch.Tensor, state: torch.Tensor, heads: int) -> torch.Tensor:
    """Gradient w.r.t. ``s: (..., G)`` of :func:`apply_gate` given ``d_gated: (..., F)``."""
    if d_gated.shape[-1] == heads:
        return d_gated * state
    return (d_gated.unflatten(-1, (heads, -1)) * state.unflatten(-1, (heads, -1))).sum(-1)


def gate_backward(variant: str, grad: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``grad * s'(z)`` (given ``s = gate(variant, z)``) in one fused ATen kernel."""
    if variant == "product":
        return torch.ops.aten.sigmoid_backward(grad, s)
    # d/dz hardsigmoid = 1/6 inside (-3, 3) (the closed and open intervals differ only at
    # z = +-3 exactly)
    return torch.ops.aten.hardtanh_backward(grad, z, -3.0, 3.0).mul_(1.0 / 6.0)


def feature_backward(spec: MixerSpec, u: torch.Tensor, coeff: torch.Tensor | None, dh: torch.Tensor):
    """Gradients of :func:`features` w.r.t. ``u`` (and the coefficients).

    u: (..., W) projection output; dh: (..., F), or (..., 1, F) when every token receives
    the same gradient. Returns ``(du_parts, dcoeff)``: ``du_parts`` a list of the
    gradients of consecutive column blocks of u (the k chunks of the product variant, so
    that they need not be concatenated; one block for power); dcoeff (E, k) for the power
    variant, None otherwise. The element-wise derivatives use ATen's fused backward
    kernels. float16 is differentiated in float32 (as the features are computed) and the
    parts returned in float16.
    """
    if u.dtype == torch.float16:
        parts, d_coeff = feature_backward(spec, u.float(), coeff, dh.float())
        return [p.half() for p in parts], d_coeff
    degree = spec.degree
    if spec.variant == "product":
        if degree == 1:
            return [torch.ops.aten.gelu_backward(dh.expand_as(u), u)], None
        u_parts = u.chunk(degree, dim=-1)
        gs = [F.gelu(part) for part in u_parts]
        dhs = dh.chunk(degree, dim=-1)
        # p_i = g_1 ... g_i; dL/dg_i = sum_{m >= i} dh_m * prod_{l <= m, l != i} g_l, by a
        # backward sweep: carry_i = sum_{m > i} dh_m prod_{i < l <= m} g_l.
        prefix = [None] * degree  # prefix[i] = p_{i-1} (None for i = 0, meaning 1)
        running = None
        for i in range(degree - 1):
            running = gs[i] if running is None else running * gs[i]
            prefix[i + 1] = running
        dus = [None] * degree
        carry = None
        for i in range(degree - 1, -1, -1):
            dp = dhs[i] if carry is None else carry + dhs[i]
            dg = dp if i == 0 else dp * prefix[i]
            dus[i] = torch.ops.aten.gelu_backward(dg.expand_as(u_parts[i]), u_parts[i])
            if i > 0:
                carry = dp * gs[i]
        return dus, None
    # power: h = sum_i a_i v^i with v = clamp(leaky(u), -0.1, 6)
    leaky = F.leaky_relu(u, 0.01)
    v = leaky.clamp(-0.1, 6.0)
    a = coeff.to(v.dtype)
    # dh/dv = sum_i i a_i v^(i-1), by Horner, in place
    if degree == 1:
        dv = (dh * a[:, 0]).expand_as(v).contiguous()
    else:
        dv = v * (degree * a[:, degree - 1])
        dv.add_((degree - 1) * a[:, degree - 2])
        for i in range(degree - 3, -1, -1):
            dv.mul_(v).add_((i + 1) * a[:, i])
        dv.mul_(dh)
    # Through the clamp, then the leaky ReLU, with ATen's fused backward kernels. (The
    # clamp passes the gradient on the open interval here, on the closed one in autograd:
    # they differ only where leaky(u) is exactly -0.1 or 6.)
    du = torch.ops.aten.hardtanh_backward(dv, leaky, -0.1, 6.0)
    du = torch.ops.aten.leaky_relu_backward(du, u, 0.01, False)
    del dv, leaky
    # dcoeff[:, i] = sum over tokens of dh * v^(i+1)
    shared = dh.shape[-2] == 1 and v.shape[-2] != 1  # one gradient row shared by the tokens
    cols, power = [], v
    for i in range(degree):
        if shared:
            cols.append((dh * power.sum(dim=-2, keepdim=True)).reshape(-1, v.shape[-1]).sum(dim=0))
        else:
            cols.append((dh * power).reshape(-1, v.shape[-1]).sum(dim=0))
        if i + 1 < degree:
            power = power * v
    return [du], torch.stack(cols, dim=-1)

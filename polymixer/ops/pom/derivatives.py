"""The derivatives of the per-token maths of :mod:`.maths`, written once and used by the
hand-written backward pass of the chunked form (:mod:`.chunked`). Each is tested against
autograd of its forward function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import MixerSpec

__all__ = ["gate_input_grad", "gate_backward", "feature_backward"]


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

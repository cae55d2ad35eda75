"""The element-wise pieces of the mixer, alone and as per-chunk fused functions.

Primitives (features, gates, their derivatives) are shared by the plain autograd path
(:class:`polymixer.nn.PolynomialMixer`), the whole-tensor fused path
(:mod:`polymixer.ops.fused`) and the token-chunked path (:mod:`polymixer.ops.chunked`).

The chunked path runs its element-wise work per chunk through :class:`ChunkOps`, whose
four methods each do in one function what would otherwise be several passes over F-wide
tensors (e.g. features then their column sum). In eager PyTorch every operation is its
own pass; on a GPU, where these passes (not the GEMMs) dominate the mixer's time, they
are compiled with ``torch.compile`` into a few fused kernels (on a CPU too for long
inputs, where fused loops beat one pass per operation). ``POLYMIXER_COMPILE`` chooses:
``auto`` (default: compiled on CUDA, and on CPU from 8192 token rows per call, see
:func:`chunk_ops`), ``always``, ``never``. If compiling fails (no compiler, an inductor bug), a warning is given once
and the eager functions are used from then on.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from .features import power_activation, power_features, product_features

__all__ = [
    "features", "gate_activation", "gate", "gate_backward", "expand_heads", "reduce_heads",
    "feature_backward", "feature_backward_parts", "ChunkOps", "chunk_ops",
]


def feature_backward(variant: str, u: torch.Tensor, coeff: torch.Tensor | None, degree: int, dh: torch.Tensor):
    """Gradients of the features w.r.t. ``u`` (and the coefficients): see :func:`feature_backward_parts`."""
    parts, d_coeff = feature_backward_parts(variant, u, coeff, degree, dh)
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)), d_coeff


def feature_backward_parts(variant: str, u: torch.Tensor, coeff: torch.Tensor | None, degree: int, dh: torch.Tensor):
    """Gradients of the features w.r.t. the projection output ``u`` (and the coefficients).

    u: (..., W) projection output (W = F for product, E for power); dh: (..., F), or
    (B, 1, F) when every token receives the same gradient (full mode). Returns
    ``(du, dcoeff)``; dcoeff is (E, k) for the power variant, None otherwise. The
    element-wise derivatives use ATen's fused ``gelu_backward`` kernel. float16 is
    differentiated in float32 (as the features are computed) and the parts returned in
    float16.
    """
    if u.dtype == torch.float16:
        parts, d_coeff = feature_backward_parts(variant, u.float(), coeff, degree, dh.float())
        return [p.half() for p in parts], d_coeff
    if variant == "product":
        if degree == 1:
            return torch.ops.aten.gelu_backward(dh.expand_as(u), u), None
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


def features(variant: str, u: torch.Tensor, coeff: torch.Tensor | None, degree: int) -> torch.Tensor:
    """Polynomial features ``(..., F)`` of the projection output ``u`` (float16 in float32)."""
    if u.dtype == torch.float16:
        u = u.float()  # as PolynomialMixer.features: degree-k products overflow fp16 first
    if variant == "product":
        return product_features(u, degree)
    return power_features(power_activation(u), coeff)


def gate_activation(variant: str, z: torch.Tensor) -> torch.Tensor:
    """sigmoid (product) or hard sigmoid ``clamp(z / 6 + 1/2, 0, 1)`` (power).

    The hard sigmoid is written out rather than ``F.hardsigmoid`` because the latter's
    backward uses a float32 constant 1/6 even in float64, which the float64 tests see.
    """
    if variant == "product":
        return torch.sigmoid(z)
    return (z / 6.0 + 0.5).clamp(0.0, 1.0)


def gate(variant: str, z: torch.Tensor) -> torch.Tensor:
    """Gate values for the fused path: ATen's one-pass kernels (same values as
    gate_activation; float64 takes gate_activation itself, as CUDA's hardsigmoid kernel
    rounds differently there)."""
    if variant == "product":
        return torch.sigmoid(z)
    return F.hardsigmoid(z) if z.dtype != torch.float64 else gate_activation(variant, z)


def gate_backward(variant, grad, z, s):
    """``grad * gate'(z)`` in one fused kernel where ATen has one."""
    if variant == "product":
        return torch.ops.aten.sigmoid_backward(grad, s)
    # d/dz hardsigmoid = 1/6 inside (-3, 3): one fused kernel (the closed and open
    # intervals differ only at z = +-3 exactly)
    return torch.ops.aten.hardtanh_backward(grad, z, -3.0, 3.0).mul_(1.0 / 6.0)


def expand_heads(s: torch.Tensor, width: int) -> torch.Tensor:
    """(..., G) gate to (..., F) by repeating each head's scalar over F/G channels."""
    if s.shape[-1] == width:
        return s
    return s.repeat_interleave(width // s.shape[-1], dim=-1)


def reduce_heads(ds: torch.Tensor, heads: int) -> torch.Tensor:
    if ds.shape[-1] == heads:
        return ds
    return ds.unflatten(-1, (heads, -1)).sum(-1)


# ----------------------------------------------------------------------------- per chunk
def _chunk_features(variant: str, degree: int, u, coeff, w):
    """Features of a chunk ``u: (..., t, W)``, times the padding weights ``w: (..., t)`` if any.

    The chunk functions take ``(t, .)`` rows or ``(nb, t / nb, .)`` views of whole batch
    rows, with states ``(t or 1, F)`` or ``(nb, 1, F)`` broadcast over the tokens."""
    h = features(variant, u, coeff, degree)
    return h if w is None else h * w.unsqueeze(-1).to(h.dtype)


def _chunk_feature_sum(variant: str, degree: int, u, coeff, w, acc: torch.dtype):
    """Sum over tokens (dim -2) of a chunk's (weighted) features, in ``acc``."""
    return _chunk_features(variant, degree, u, coeff, w).sum(dim=-2, dtype=acc)


def _chunk_gated(variant: str, z, H, width: int):
    """``s(z) * H``: gate of a chunk ``z: (t, G)`` times its states ``H: (t or 1, F)``."""
    return expand_heads(gate(variant, z), width) * H.to(z.dtype)


def _chunk_gate_backward(variant: str, z, H, d_gated, width: int, sum_rows: bool, acc: torch.dtype):
    """Backward of the gate side of a chunk, given ``d_gated = dy @ W_o``.

    Returns ``(gated, d_state, d_z)``: the recomputed ``s * H`` (for W_o's gradient), the
    gradient of the states ``d_gated * s`` (summed over tokens, dim -2, when ``sum_rows``; in acc)
    and the gradient of the gate projection's output.
    """
    s = gate(variant, z)
    s_full = expand_heads(s, width)
    Hc = H.to(s.dtype)
    gated = s_full * Hc
    d_state = d_gated * s_full
    d_state = d_state.sum(dim=-2, dtype=acc) if sum_rows else d_state.to(acc)
    d_z = gate_backward(variant, reduce_heads(d_gated * Hc, s.shape[-1]), z, s)
    return gated, d_state, d_z


def _chunk_feature_backward(variant: str, degree: int, u, coeff, dh, w):
    """``feature_backward_parts`` of a chunk, with the padding weights ``w`` applied to dh."""
    if w is not None:
        dh = dh * w.unsqueeze(-1).to(dh.dtype)
    return feature_backward_parts(variant, u, coeff, degree, dh)


class ChunkOps:
    """The per-chunk element-wise functions, eager or compiled (see the module doc)."""

    def __init__(self, compiled: bool):
        self.compiled = compiled
        if compiled:
            c = lambda fn: torch.compile(fn, dynamic=True)  # noqa: E731 - chunk sizes vary
            self._fns = [c(_chunk_features), c(_chunk_feature_sum), c(_chunk_gated),
                         c(_chunk_gate_backward), c(_chunk_feature_backward)]
        else:
            self._fns = [_chunk_features, _chunk_feature_sum, _chunk_gated,
                         _chunk_gate_backward, _chunk_feature_backward]

    def _call(self, index: int, *args):
        global _COMPILE_BROKEN
        if self.compiled and not _COMPILE_BROKEN:
            try:
                return self._fns[index](*args)
            except Exception as e:  # the compiler failed: fall back to eager for good
                if "out of memory" in str(e).lower():
                    raise  # the device is full, not the compiler broken
                _COMPILE_BROKEN = True
                warnings.warn(f"polymixer: compiling the mixer's element-wise work failed, using eager "
                              f"PyTorch from now on (set POLYMIXER_COMPILE=never to skip it): "
                              f"{type(e).__name__}: {str(e)[:500]}", RuntimeWarning, stacklevel=3)
        return _EAGER._fns[index](*args)

    def features(self, variant, degree, u, coeff, w):
        return self._call(0, variant, degree, u, coeff, w)

    def feature_sum(self, variant, degree, u, coeff, w, acc):
        return self._call(1, variant, degree, u, coeff, w, acc)

    def gated(self, variant, z, H, width):
        return self._call(2, variant, z, H, width)

    def gate_backward(self, variant, z, H, d_gated, width, sum_rows, acc):
        return self._call(3, variant, z, H, d_gated, width, sum_rows, acc)

    def feature_backward(self, variant, degree, u, coeff, dh, w):
        return self._call(4, variant, degree, u, coeff, dh, w)


_EAGER = ChunkOps(compiled=False)
_COMPILED: ChunkOps | None = None
_COMPILE_BROKEN = False


#: ``auto`` compiles on CPU from this many token rows per call (``POLYMIXER_COMPILE_MIN_ROWS``).
CPU_COMPILE_MIN_ROWS = 8192


def chunk_ops(device, rows: int = 0) -> ChunkOps:
    """The :class:`ChunkOps` for a call on ``device`` over ``rows`` token rows (B * N).

    ``POLYMIXER_COMPILE``: ``auto`` (default) compiles on CUDA, and on CPU for calls of at
    least ``POLYMIXER_COMPILE_MIN_ROWS`` (8192) token rows, where a one-time compile (about
    10-20 s) is soon paid back; ``always``; ``never``.
    """
    global _COMPILED
    setting = os.environ.get("POLYMIXER_COMPILE", "auto").lower()
    if setting not in ("auto", "always", "never"):
        raise ValueError(f"POLYMIXER_COMPILE: expected auto, always or never, got {setting!r}")
    use = setting == "always"
    if setting == "auto":
        if torch.device(device).type == "cuda":
            use = True
        else:
            threshold = os.environ.get("POLYMIXER_COMPILE_MIN_ROWS", str(CPU_COMPILE_MIN_ROWS))
            try:
                use = rows >= int(threshold)
            except ValueError:
                raise ValueError(f"POLYMIXER_COMPILE_MIN_ROWS: expected an integer, got {threshold!r}") from None
    if not use or _COMPILE_BROKEN:
        return _EAGER
    if _COMPILED is None:
        _COMPILED = ChunkOps(compiled=True)
    return _COMPILED

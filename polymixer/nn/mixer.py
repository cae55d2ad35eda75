"""The Polynomial Mixer layer (spec sections 1-3, 6)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.context import ContextMode, aggregate, resolve_context
from ..ops.features import power_activation, power_features, product_features
from ..ops.fused import fused_mix, gate_activation
from ..ops.reference import reference_aggregate
from ._checks import check_positive_int, check_tokens
from .state import MixerState

__all__ = ["PolynomialMixer"]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype for ``device_type`` when autocast is on there, else None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # pragma: no cover - torch < 2.4
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()

VARIANTS = ("product", "power")
IMPLEMENTATIONS = ("fused", "lean", "autograd")


class PolynomialMixer(nn.Module):
    """Polynomial Mixer: a linear-time, drop-in replacement for multi-head attention.

    Every context token j is mapped to polynomial features ``h(c_j)`` of width F; each
    query i reads the mean ``H_i`` of the features of its context set through a gate:
    ``y_i = W_o (s(x_i) * H_i) + b_o``.

    Args:
        dim: token width D.
        degree: polynomial degree k, 1..8.
        expand: expansion e >= 1.
        variant: ``"product"`` (2024 paper, default: F = k*e*D, GELU products, sigmoid
            gate) or ``"power"`` (2026 paper: F = e*D, learned power series of a bounded
            activation, hard-sigmoid gate).
        heads: 1 gives a gate of width F; ``heads > 1`` gives one gate scalar per head,
            broadcast over F/heads channels (heads must divide F).
        bias: bias of the output projection; default True for "product", False for
            "power" (the reference codes' defaults).
        implementation: how the backward pass is done (the outputs are the same):
            ``"fused"`` (default) keeps two F-wide tensors per mixer and recomputes the
            element-wise work; ``"lean"`` keeps only the inputs and (B, F) states and
            recomputes the projections too; ``"autograd"`` is plain PyTorch autograd
            (about six F-wide tensors). Under autocast the fused and lean passes run in
            the autocast dtype (states and sums stay float32). With a streaming
            ``state``, inside ``torch.compile``, and for "fused" in the causal mode on
            CUDA (where it is faster and keeps less) the plain autograd form is used.
            The fused and lean backward passes are not differentiable again: use
            "autograd" for double backward (gradient penalties).

    Shapes: ``x: (B, M, D)`` queries; ``context: (B, N, D)`` (default: x itself);
    output ``(B, M, D)``. Context modes are keyword arguments, see :meth:`forward`.
    """

    def __init__(
        self,
        dim: int,
        degree: int = 2,
        expand: int = 2,
        variant: str = "product",
        heads: int = 1,
        bias: bool | None = None,
        implementation: str = "fused",
        device=None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        check_positive_int("dim", dim)
        check_positive_int("degree", degree, 1, 8)
        check_positive_int("expand", expand)
        check_positive_int("heads", heads)
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.dim, self.degree, self.expand, self.variant, self.heads = dim, degree, expand, variant, heads
        inner = expand * dim
        self.state_width = degree * inner if variant == "product" else inner
        if self.state_width % heads != 0:
            raise ValueError(
                f"heads: {heads} does not divide the state width F={self.state_width} "
                f"(variant={variant!r}, degree={degree}, expand={expand}, dim={dim})"
            )
        gate_width = self.state_width if heads == 1 else heads
        kw = {"device": device, "dtype": dtype}
        if variant == "product":
            self.feature_proj = nn.Linear(dim, self.state_width, bias=True, **kw)
            self.gate_proj = nn.Linear(dim, gate_width, bias=True, **kw)
            self.register_parameter("coeff", None)
            out_bias = True if bias is None else bias
        else:
            self.feature_proj = nn.Linear(dim, inner, bias=False, **kw)
            self.gate_proj = nn.Linear(dim, gate_width, bias=True, **kw)
            # a_i = 1/i!: a truncated exponential series, a smooth start for any degree.
            init = torch.tensor([1.0 / math.factorial(i) for i in range(1, degree + 1)], **kw)
            self.coeff = nn.Parameter(init.repeat(inner, 1))
            out_bias = False if bias is None else bias
        self.out_proj = nn.Linear(self.state_width, dim, bias=out_bias, **kw)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, degree={self.degree}, expand={self.expand}, "
            f"variant={self.variant!r}, heads={self.heads}, state_width={self.state_width}, "
            f"implementation={self.implementation!r}"
        )

    # ---------------------------------------------------------------- parts
    def features(self, context: torch.Tensor) -> torch.Tensor:
        """Polynomial features ``h: (B, N, F)`` of context tokens ``(B, N, D)``."""
        u = self.feature_proj(context)
        if u.dtype == torch.float16:
            u = u.float()  # products of degree k overflow fp16's range first
        if self.variant == "product":
            return product_features(u, self.degree)
        return power_features(power_activation(u), self.coeff)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``s: (B, M, F)`` or ``(B, M, heads)`` of the queries ``(B, M, D)``."""
        z = self.gate_proj(x)
        return gate_activation(self.variant, z)

    def select(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``W_o (s(x) * H) + b_o`` for queries ``x: (B, M, D)`` and states ``(B, 1 or M, F)``."""
        s = self.gate(x)
        state = state.to(s.dtype)
        if self.heads == 1:
            z = s * state
        else:
            B, M = s.shape[:2]
            z = (s.unsqueeze(-1) * state.unflatten(-1, (self.heads, -1))).reshape(B, M, self.state_width)
        return self.out_proj(z)

    # ---------------------------------------------------------------- checks
    def _resolve(self, x, context, state, kwargs) -> tuple[torch.Tensor, ContextMode, tuple | None]:
        check_tokens("x", x, self.dim)
        if context is None:
            context = x
        else:
            check_tokens("context", context, self.dim, batch=x.shape[0])
        mode = resolve_context(x.shape[0], x.shape[1], context.shape[1], device=x.device, **kwargs)
        prefix = None
        if state is not None:
            self._check_state(state, x.shape[0])
            if mode.kind not in ("full", "causal", "block"):
                raise ValueError(
                    f"state: a streaming state cannot be combined with the {mode.kind} context mode "
                    "(use it with the full, causal or block-causal modes)"
                )
            prefix = (state.total, state.count)
        return context, mode, prefix

    def _check_state(self, state, batch: int) -> None:
        if not isinstance(state, MixerState):
            raise TypeError(f"state: expected a MixerState, got {type(state).__name__}")
        if state.width != self.state_width:
            raise ValueError(f"state: width {state.width} does not match this mixer's state width {self.state_width}")
        if state.batch_size != batch:
            raise ValueError(f"state: batch size {state.batch_size} does not match the input's batch size {batch}")

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        block_size: int | None = None,
        block_lengths: Sequence[int] | torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        state: MixerState | None = None,
    ) -> torch.Tensor:
        """Mix the tokens of ``x: (B, M, D)``; returns ``(B, M, D)``.

        Args:
            context: ``(B, N, D)`` tokens to read from (cross-mixing); default x.
            context_mask: ``(B, N)`` bool, True for real context tokens (padding mask).
            causal: query i reads context tokens j <= i (M = N).
            block_size: block-causal with blocks of T tokens, last one possibly shorter.
            block_lengths: block-causal with explicit consecutive block lengths.
            cu_seqlens: ``(S + 1,)`` packed sequences, full (or causal) inside each.
            mask: dense ``(B, M, N)`` bool mask, the general O(M*N) form.
            state: a :class:`MixerState` of tokens seen before x; every query also reads
                them (full, causal and block modes). Use :meth:`step` to also update it.
        """
        context, mode, prefix = self._resolve(
            x,
            context,
            state,
            dict(context_mask=context_mask, causal=causal, block_size=block_size,
                 block_lengths=block_lengths, cu_seqlens=cu_seqlens, mask=mask),
        )
        if self._use_fused(prefix, mode, x):
            cross = None if context is x else context
            lean = self.implementation == "lean"
            dtype = _autocast_dtype(x.device.type)
            if dtype is None:
                return fused_mix(x, cross, self, mode, lean=lean)
            # Autocast: run the fused pass in the autocast dtype, as autocast would run the
            # projections (the casts are differentiable, so fp32 weights get fp32 gradients).
            with torch.autocast(x.device.type, enabled=False):
                return fused_mix(x, cross, self, mode, lean=lean, dtype=dtype)
        return self.select(x, aggregate(self.features(context), mode, prefix))

    def _use_fused(self, prefix, mode: ContextMode, x: torch.Tensor) -> bool:
        if self.implementation == "autograd" or prefix is not None:
            return False
        if self.implementation == "fused" and mode.kind == "causal" and x.is_cuda:
            # On a GPU the autograd form with the Triton scan is faster and keeps less than
            # the fused form's per-token (B, N, F) float32 states (H200, bench_gpu.py).
            return False
        try:
            if torch.compiler.is_compiling():
                return False
        except AttributeError:  # pragma: no cover
            pass
        return True

    def forward_reference(self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """The same function as :meth:`forward` through the slow dense-mask loop (test oracle)."""
        context, mode, _ = self._resolve(x, context, None, kwargs)
        return self.select(x, reference_aggregate(self.features(context), mode, x.shape[1]))

    # ---------------------------------------------------------------- streaming
    def init_state(self, batch_size: int, device=None) -> MixerState:
        """A zero state (float32 sum ``(B, F)`` and count ``(B,)``) for ``batch_size`` sequences."""
        if device is None:
            device = self.out_proj.weight.device
        return MixerState.zeros(batch_size, self.state_width, device=device)

    def step(
        self,
        x: torch.Tensor,
        state: MixerState,
        *,
        context_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MixerState]:
        """Feed the next block ``x: (B, t, D)`` of a stream; returns ``(y (B, t, D), new_state)``.

        Every token of the block reads the state of all earlier tokens plus the whole
        block (spec section 3), so feeding a sequence block by block equals the parallel
        block-causal forward. ``state`` is not modified. ``context_mask: (B, t)`` leaves
        padded tokens of the block out of the state.
        """
        if not isinstance(state, MixerState):
            raise TypeError(f"state: expected a MixerState, got {type(state).__name__}")
        context, mode, prefix = self._resolve(x, None, state, dict(context_mask=context_mask))
        h = self.features(x)
        y = self.select(x, aggregate(h, mode, prefix))
        acc = state.total.dtype
        hw = h.to(acc)
        if context_mask is None:
            added_total = hw.sum(dim=1)
            added_count = torch.full_like(state.count, float(x.shape[1]))
        else:
            w = context_mask.to(acc)
            added_total = torch.einsum("bn,bnf->bf", w, hw)
            added_count = w.sum(dim=1)
        return y, MixerState(state.total + added_total, state.count + added_count)

    # ---------------------------------------------------------------- interop
    @classmethod
    def from_reference(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        variant: str = "product",
        degree: int = 2,
        expand: int = 2,
        heads: int = 1,
    ) -> "PolynomialMixer":
        """Build a mixer from a state dict in the layout of the authors' public code.

        product: ``ho_proj`` (2024) or ``po_proj`` (2025) ``W_h, b_h``; ``se_proj``
        ``W_s, b_s``; ``ag_proj`` ``W_o, b_o``.
        power: ``qc_proj.weight`` ``(e*D + G, D)`` (W_h rows then W_s rows), ``se_bias``
        ``(G,)``, ``po_coeff`` ``(e*D, k)``, ``ag_proj.weight`` (+ optional bias); or, for
        grouped projections, ``po_proj.weight`` ``(e*D, D/groups, 1)`` with
        ``se_proj.weight``/``se_proj.bias``. Spec section 6.
        """
        from .reference_io import load_reference

        return load_reference(cls, state_dict, variant=variant, degree=degree, expand=expand, heads=heads)

"""The Polynomial Mixer layer (docs/design.md, sections 1-3, 6)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ..ops import pom
from ..ops.context import ContextMode, resolve_context
from ..ops.plan import FORMS, ExecutionPlan, MixerSettings, choose_path
from ..ops.pom import MixerSpec, MixerWeights
from ._checks import check_positive_int, check_tokens
from .state import MixerState

__all__ = ["PolynomialMixer"]

VARIANTS = ("product", "power")
IMPLEMENTATIONS = FORMS


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
            the autocast dtype (states and sums stay float32). It is a request: with a
            streaming ``state``, inside ``torch.compile``, and for "fused" in the causal
            mode on CUDA (where it is faster and keeps less) the plain autograd form
            runs; :meth:`execution_plan` says which form a call runs, and why. The fused
            and lean backward passes are not differentiable again: use "autograd" for
            double backward (gradient penalties).
        settings: a :class:`~polymixer.ops.plan.MixerSettings` (compiling the fused
            passes' element-wise work, the Triton aggregation, the chunk size); default
            ``MixerSettings.from_env()``, the environment variables ``POLYMIXER_COMPILE``,
            ``POLYMIXER_COMPILE_MIN_ROWS``, ``POLYMIXER_TRITON`` read once, here. The
            attribute ``settings`` can be replaced at any time.

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
        *,
        settings: MixerSettings | None = None,
    ):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        if settings is not None and not isinstance(settings, MixerSettings):
            raise TypeError(f"settings: expected a MixerSettings, got {type(settings).__name__}")
        self.settings = settings if settings is not None else MixerSettings.from_env()
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

    constant_state = True  # a sum (B, F) and a count (B,), whatever the tokens seen

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, degree={self.degree}, expand={self.expand}, "
            f"variant={self.variant!r}, heads={self.heads}, state_width={self.state_width}, "
            f"implementation={self.implementation!r}"
        )

    # ---------------------------------------------------------------- parts
    @property
    def spec(self) -> MixerSpec:
        """The static description the tensor functions of :mod:`polymixer.ops` take."""
        return MixerSpec(self.variant, self.degree, self.heads)

    def weights(self) -> MixerWeights:
        """The parameters as the named structure the tensor functions take."""
        return MixerWeights(self.feature_proj.weight, self.feature_proj.bias, self.coeff,
                            self.gate_proj.weight, self.gate_proj.bias, self.out_proj.weight, self.out_proj.bias)

    def features(self, context: torch.Tensor) -> torch.Tensor:
        """Polynomial features ``h: (B, N, F)`` of context tokens ``(B, N, D)``."""
        return pom.context_features(context, self.weights(), self.spec)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``s: (B, M, F)`` or ``(B, M, heads)`` of the queries ``(B, M, D)``."""
        return pom.gate(self.variant, self.gate_proj(x))

    def read_out(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``W_o (s(x) * H) + b_o`` for queries ``x: (B, M, D)`` and states ``H: (B, 1 or M, F)``."""
        return pom.read_out(x, state, self.weights(), self.spec)

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
            if not mode.streamable:
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

    def _plan(self, x, context, mode, streaming: bool) -> ExecutionPlan:
        return choose_path(self.settings, self.implementation, self.spec, self.state_width, x, context, mode,
                           streaming)

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

        Runs the plan :meth:`execution_plan` returns for the same arguments.
        """
        context, mode, prefix = self._resolve(
            x,
            context,
            state,
            dict(context_mask=context_mask, causal=causal, block_size=block_size,
                 block_lengths=block_lengths, cu_seqlens=cu_seqlens, mask=mask),
        )
        plan = self._plan(x, context, mode, prefix is not None)
        return pom.mix(x, None if context is x else context, self.weights(), self.spec, mode, plan, prefix)

    def execution_plan(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                       state: MixerState | None = None, **context_kwargs) -> ExecutionPlan:
        """The :class:`~polymixer.ops.plan.ExecutionPlan` that ``self(x, context, state=state,
        **context_kwargs)`` runs now (with the current autocast state): its form, whether
        it runs chunked and compiled, its aggregation backend, and why."""
        context, mode, prefix = self._resolve(x, context, state, context_kwargs)
        return self._plan(x, context, mode, prefix is not None)

    def forward_reference(self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """The same function as :meth:`forward` through the slow dense-mask loop (test oracle)."""
        context, mode, _ = self._resolve(x, context, None, kwargs)
        return pom.reference_mix(x, context, self.weights(), self.spec, mode)

    # ---------------------------------------------------------------- streaming
    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> MixerState:
        """A zero state (sum ``(B, F)`` and count ``(B,)``) for ``batch_size`` sequences.

        dtype: that of the sums; default float64 for a float64 mixer (a float64 stream
        equals the float64 parallel form to ~1e-12), float32 otherwise (also for bf16/fp16
        mixers: float32 is the floor). device: default the mixer's.
        """
        weight = self.out_proj.weight
        if device is None:
            device = weight.device
        if dtype is None:
            dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return MixerState.zeros(batch_size, self.state_width, device=device, dtype=dtype)

    def step(
        self,
        x: torch.Tensor,
        state: MixerState,
        *,
        context_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MixerState]:
        """Feed the next block ``x: (B, t, D)`` of a stream; returns ``(y (B, t, D), new_state)``.

        Every token of the block reads the state of all earlier tokens plus the whole
        block (docs/design.md, section 3), so feeding a sequence block by block equals the parallel
        block-causal forward. ``state`` is not modified; the new state keeps its dtype.
        ``context_mask: (B, t)`` leaves padded tokens of the block out of the state.
        Plain autograd (the form a streaming state runs: :meth:`execution_plan` with ``state``).
        """
        if not isinstance(state, MixerState):
            raise TypeError(f"state: expected a MixerState, got {type(state).__name__}")
        _, mode, _ = self._resolve(x, None, state, dict(context_mask=context_mask))
        plan = self._plan(x, x, mode, streaming=True)
        y, total, count = pom.step(x, self.weights(), self.spec, plan, state.total, state.count, mode.context_mask)
        return y, MixerState(total, count)

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
        ``se_proj.weight``/``se_proj.bias``. docs/design.md, section 6.
        """
        from .reference_io import load_reference

        return load_reference(cls, state_dict, variant=variant, degree=degree, expand=expand, heads=heads)

"""The Polynomial Mixer layer (docs/design.md, sections 1-3, 6)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ..ops import pom
from ..ops.context import ContextMode, resolve_context
from ..ops.frame_memory import DecayWeights, check_frame_memory_mode, initial_decay_logit, parse_frame_memory
from ..ops.plan import FORMS, ExecutionPlan, MixerSettings, autocast_dtype, choose_path
from ..ops.pom.chunk_ops import SHARED_COMPILE_RECORD
from ..ops.pom import MixerSpec, MixerWeights
from ..ops.pom.rotary import ROTARY_QUERY, rotary_angles, rotary_layout
from ._checks import check_positive_int, check_tokens
from .state import FrameMemoryState, MixerState

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
            attribute ``settings`` can be replaced at any time. The attribute
            ``compile_record`` (a :class:`~polymixer.ops.pom.chunk_ops.CompileRecord`,
            default the one all mixers share) holds the element-wise functions whose
            compile failed; the plan runs them eagerly. Give a mixer its own record to
            keep it apart from the others.
        rotary_axes: 0 (default) for none, or the number A (1, 2 or 3) of position axes
            of rotary positions inside the mixer (docs/design.md, section 8): each context
            token's features are rotated by its position before the mean, channel pairs
            taken in turn by the axes (e.g. row and column of an image; frame, row and
            column of a video); every call then takes ``positions`` (:mod:`polymixer.ops.pom.rotary`;
            the fused and lean forms rotate chunk by chunk; ``rotary_query="gate"`` runs
            the plain autograd form). F must be even.
        rotary_max_freq, rotary_min_freq: the frequencies of each axis's pairs, spread
            geometrically from ``rotary_max_freq`` (default pi: the fastest pair flips
            from one token to the next) down to ``rotary_min_freq`` radians per unit of
            position (default pi / 32: a quarter turn over 8 tokens).
        rotary_query: where the query's position enters: ``"state"`` (default: the mean is
            rotated back by it, so the output depends on relative positions only) or
            ``"gate"`` (the gate is rotated by it, the authors' 2026 placement: relative
            only summed over each channel pair).
        frame_memory: what a frame reads of the frames before it in the block-causal mode
            with one block per frame (a video; docs/design.md, section 8,
            :mod:`polymixer.ops.frame_memory`): ``"mean"`` (default: the plain mean over
            every token of the frames so far), ``"decay"`` (a learned decay per channel
            ``γ = sigmoid(decay_logit)``, starting at 0.9: frame g weighs ``γ^(f-g)``, sums
            and counts alike), ``"gated-decay"`` (``γ_f = sigmoid(decay_weight · x̄_f +
            decay_logit)`` from the mean ``x̄_f`` of the frame being added, which decays the
            past) or ``"window:W"`` (the plain mean over the last W frames, the current one
            included). Every option keeps O(N), a constant-size state
            (:class:`~polymixer.nn.FrameMemoryState` for the new ones) and stream == parallel;
            the options but the mean run the plain autograd form and need the block-causal
            (``block_size``) or full (one frame) mode.

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
        rotary_axes: int = 0,
        rotary_max_freq: float = math.pi,
        rotary_min_freq: float = math.pi / 32,
        rotary_query: str = "state",
        frame_memory: str = "mean",
    ):
        super().__init__()
        self.frame_memory = parse_frame_memory(frame_memory)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        if settings is not None and not isinstance(settings, MixerSettings):
            raise TypeError(f"settings: expected a MixerSettings, got {type(settings).__name__}")
        self.settings = settings if settings is not None else MixerSettings.from_env()
        self.compile_record = SHARED_COMPILE_RECORD
        self.inference_calls = 0  # forward calls without gradients so far (MixerSettings.compile_after_calls)
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
        check_positive_int("rotary_axes", rotary_axes, 0, 3)
        if rotary_query not in ROTARY_QUERY:
            raise ValueError(f"rotary_query: expected one of {ROTARY_QUERY}, got {rotary_query!r}")
        if rotary_axes:
            if self.state_width % 2 != 0:
                raise ValueError(f"rotary_axes: rotary positions rotate channel pairs, but the state width "
                                 f"F={self.state_width} is odd (variant={variant!r}, degree={degree}, "
                                 f"expand={expand}, dim={dim})")
            if self.state_width // 2 < rotary_axes:
                raise ValueError(f"rotary_axes: {rotary_axes} axes need at least as many channel pairs, "
                                 f"F={self.state_width} has {self.state_width // 2}")
            for name, value in (("rotary_max_freq", rotary_max_freq), ("rotary_min_freq", rotary_min_freq)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                    raise ValueError(f"{name}: expected a positive number, got {value!r}")
            if rotary_min_freq > rotary_max_freq:
                raise ValueError(f"rotary_min_freq: {rotary_min_freq} is above rotary_max_freq={rotary_max_freq}")
        self.rotary_axes, self.rotary_query = rotary_axes, rotary_query
        self.rotary_max_freq, self.rotary_min_freq = float(rotary_max_freq), float(rotary_min_freq)
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
        # the decay's parameters are plain Parameters (not nn.Linear), so that a model's generic
        # initialisation of its linear layers leaves the decay starting near 1
        if self.frame_memory.decays:
            self.decay_logit = nn.Parameter(torch.full((self.state_width,), initial_decay_logit(), **kw))
        if self.frame_memory.kind == "gated-decay":
            self.decay_weight = nn.Parameter(torch.zeros(self.state_width, dim, **kw))

    constant_state = True  # a sum (B, F) and a count (B,), whatever the tokens seen

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, degree={self.degree}, expand={self.expand}, "
            f"variant={self.variant!r}, heads={self.heads}, state_width={self.state_width}, "
            f"implementation={self.implementation!r}"
            + (f", rotary_axes={self.rotary_axes}, rotary_query={self.rotary_query!r}" if self.rotary_axes else "")
            + ("" if self.frame_memory.is_mean else f", frame_memory={str(self.frame_memory)!r}")
        )

    # ---------------------------------------------------------------- parts
    @property
    def spec(self) -> MixerSpec:
        """The static description the tensor functions of :mod:`polymixer.ops` take."""
        return MixerSpec(self.variant, self.degree, self.heads, self.rotary_query)

    @property
    def uses_positions(self) -> bool:
        """Whether calls take token ``positions`` (rotary positions are on): models pass
        ``positions=`` only to mixers that say so."""
        return self.rotary_axes > 0

    def rotary_layout(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frequencies (F/2,), axis (F/2,))`` of the channel pairs (:func:`~polymixer.ops.pom.rotary.rotary_layout`)."""
        return rotary_layout(self.state_width // 2, self.rotary_axes, self.rotary_max_freq, self.rotary_min_freq,
                             device=device)

    def rotary_angles(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Angles ``(..., N, F/2)`` of tokens at ``positions: (..., N, A)`` (float64 for float64 positions)."""
        frequencies, axis = self.rotary_layout(positions.device)
        return rotary_angles(positions, frequencies, axis, dtype)

    def weights(self) -> MixerWeights:
        """The parameters as the named structure the tensor functions take."""
        return MixerWeights(self.feature_proj.weight, self.feature_proj.bias, self.coeff,
                            self.gate_proj.weight, self.gate_proj.bias, self.out_proj.weight, self.out_proj.bias)

    def decay_weights(self) -> DecayWeights | None:
        """The learned decay of the "decay"/"gated-decay" frame memories (None otherwise)."""
        if not self.frame_memory.decays:
            return None
        return DecayWeights(self.decay_logit, getattr(self, "decay_weight", None))

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
    def _angles(self, name: str, positions, x: torch.Tensor, tokens: int) -> torch.Tensor | None:
        """The rotary angles of ``positions`` for ``tokens`` tokens of a batch like ``x``
        (float64 for a float64 ``x``), after checking them; None without rotary positions."""
        if not self.rotary_axes:
            if positions is not None:
                raise ValueError(f"{name}: this mixer has no rotary positions (rotary_axes=0); pass none")
            return None
        A = self.rotary_axes
        if positions is None:
            raise ValueError(f"{name}: this mixer has rotary positions (rotary_axes={A}): pass the tokens' "
                             f"coordinates, a ({tokens}, {A}) or (B, {tokens}, {A}) tensor")
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor of token coordinates, got {type(positions).__name__}")
        if positions.dtype == torch.bool or positions.is_complex():
            raise TypeError(f"{name}: expected int or float coordinates, got dtype {positions.dtype}")
        shape = tuple(positions.shape)
        if not (positions.dim() in (2, 3) and shape[-2:] == (tokens, A)
                and (positions.dim() == 2 or shape[0] in (1, x.shape[0]))):
            raise ValueError(f"{name}: expected shape ({tokens}, {A}) or ({x.shape[0]}, {tokens}, {A}) "
                             f"(tokens, axes), got {shape}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self.rotary_angles(positions.to(x.device), dtype)

    def _resolve(self, x, context, state, kwargs) -> tuple[torch.Tensor, ContextMode, tuple | None]:
        check_tokens("x", x, self.dim)
        if context is None:
            context = x
        else:
            check_tokens("context", context, self.dim, batch=x.shape[0])
        mode = resolve_context(x.shape[0], x.shape[1], context.shape[1], device=x.device, **kwargs)
        check_frame_memory_mode(self.frame_memory, mode)
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
        expected = MixerState if self.frame_memory.is_mean else FrameMemoryState
        if not isinstance(state, expected):
            raise TypeError(f"state: expected a {expected.__name__} (frame_memory={str(self.frame_memory)!r}), "
                            f"got {type(state).__name__}")
        if not self.frame_memory.is_mean and state.window != self.frame_memory.window:
            raise ValueError(f"state: a state of window={state.window} does not fit frame_memory="
                             f"{str(self.frame_memory)!r}")
        if state.width != self.state_width:
            raise ValueError(f"state: width {state.width} does not match this mixer's state width {self.state_width}")
        if state.batch_size != batch:
            raise ValueError(f"state: batch size {state.batch_size} does not match the input's batch size {batch}")

    def _plan(self, x, context, mode, streaming: bool) -> ExecutionPlan:
        dtype = autocast_dtype(x.device.type) or x.dtype
        spec = self.spec
        failed = self.compile_record.failed((spec.variant, spec.degree, spec.heads, x.device.type, dtype))
        memory = () if self.frame_memory.is_mean else (f"frame_memory={str(self.frame_memory)!r}",)
        return choose_path(self.settings, self.implementation, self.spec, self.state_width, x, context, mode,
                           streaming, autograd_only=(("rotary_query='gate'",) if self.rotary_axes
                                                     and self.rotary_query == "gate" else ()) + memory,
                           torch_aggregation_only=memory, compile_failures=failed,
                           inference_calls=None if torch.is_grad_enabled() else self.inference_calls)

    def _all_angles(self, x, context, positions, context_positions):
        """(context angles, query angles) of a call (None, None without rotary positions)."""
        query = self._angles("positions", positions, x, x.shape[1])
        if context is x:
            if context_positions is not None:
                raise ValueError("context_positions: only with a separate context (cross-mixing); self-mixing "
                                 "uses positions")
            return query, query
        if self.rotary_axes and context_positions is None:
            raise ValueError(f"context_positions: a mixer with rotary positions needs the context tokens' "
                             f"coordinates too, a ({context.shape[1]}, {self.rotary_axes}) tensor")
        return self._angles("context_positions", context_positions, x, context.shape[1]), query

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
        positions: torch.Tensor | None = None,
        context_positions: torch.Tensor | None = None,
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
            positions: with rotary positions (``rotary_axes = A``), the coordinates of the
                queries, ``(M, A)`` or ``(B, M, A)``, int or float (e.g. (row, column)).
            context_positions: those of the context tokens, ``(N, A)`` or ``(B, N, A)``,
                with a separate ``context`` (self-mixing: ``positions``).

        Runs the plan :meth:`execution_plan` returns for the same arguments.
        """
        context, mode, prefix = self._resolve(
            x,
            context,
            state,
            dict(context_mask=context_mask, causal=causal, block_size=block_size,
                 block_lengths=block_lengths, cu_seqlens=cu_seqlens, mask=mask),
        )
        angles, query_angles = self._all_angles(x, context, positions, context_positions)
        plan = self._plan(x, context, mode, prefix is not None)
        if not torch.is_grad_enabled():
            self.inference_calls += 1
        return pom.mix(x, None if context is x else context, self.weights(), self.spec, mode, plan, prefix,
                       angles, query_angles, self.frame_memory, self.decay_weights(), self.compile_record)

    def execution_plan(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                       state: MixerState | None = None, **context_kwargs) -> ExecutionPlan:
        """The :class:`~polymixer.ops.plan.ExecutionPlan` that ``self(x, context, state=state,
        **context_kwargs)`` runs now (with the current autocast state): its form, whether
        it runs chunked and compiled, its aggregation backend, and why."""
        context_kwargs = dict(context_kwargs)
        positions = context_kwargs.pop("positions", None)
        context_positions = context_kwargs.pop("context_positions", None)
        context, mode, prefix = self._resolve(x, context, state, context_kwargs)
        self._all_angles(x, context, positions, context_positions)
        return self._plan(x, context, mode, prefix is not None)

    def forward_reference(self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """The same function as :meth:`forward` through the slow dense-mask loop (test oracle)."""
        kwargs = dict(kwargs)
        positions = kwargs.pop("positions", None)
        context_positions = kwargs.pop("context_positions", None)
        context, mode, _ = self._resolve(x, context, None, kwargs)
        angles, query_angles = self._all_angles(x, context, positions, context_positions)
        return pom.reference_mix(x, context, self.weights(), self.spec, mode, angles, query_angles,
                                 self.frame_memory, self.decay_weights())

    # ---------------------------------------------------------------- streaming
    def init_state(self, batch_size: int, device=None,
                   dtype: torch.dtype | None = None) -> MixerState | FrameMemoryState:
        """A zero state (sum ``(B, F)`` and count ``(B,)``) for ``batch_size`` sequences; a
        :class:`~polymixer.nn.FrameMemoryState` with a frame memory other than the mean.

        dtype: that of the sums; default float64 for a float64 mixer (a float64 stream
        equals the float64 parallel form to ~1e-12), float32 otherwise (also for bf16/fp16
        mixers: float32 is the floor). device: default the mixer's.
        """
        weight = self.out_proj.weight
        if device is None:
            device = weight.device
        if dtype is None:
            dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        if not self.frame_memory.is_mean:
            return FrameMemoryState.zeros(batch_size, self.state_width, self.frame_memory.window, device=device,
                                          dtype=dtype)
        return MixerState.zeros(batch_size, self.state_width, device=device, dtype=dtype)

    def step(
        self,
        x: torch.Tensor,
        state: MixerState | FrameMemoryState,
        *,
        context_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MixerState | FrameMemoryState]:
        """Feed the next block ``x: (B, t, D)`` of a stream; returns ``(y (B, t, D), new_state)``.

        Every token of the block reads the state of all earlier tokens plus the whole
        block (docs/design.md, section 3), so feeding a sequence block by block equals the parallel
        block-causal forward. ``state`` is not modified; the new state keeps its dtype.
        ``context_mask: (B, t)`` leaves padded tokens of the block out of the state.
        ``positions: (t, A)`` or ``(B, t, A)``: with rotary positions, the block's own
        coordinates (continuing those of the earlier blocks); the state then holds the
        sum of the rotated features. With a ``frame_memory`` other than the mean the block
        is one frame and ``state`` its :class:`~polymixer.nn.FrameMemoryState`.
        Plain autograd (the form a streaming state runs: :meth:`execution_plan` with ``state``).
        """
        _, mode, _ = self._resolve(x, None, state, dict(context_mask=context_mask))
        angles = self._angles("positions", positions, x, x.shape[1])
        plan = self._plan(x, x, mode, streaming=True)
        y, total, count = pom.step(x, self.weights(), self.spec, plan, state.total, state.count, mode.context_mask,
                                   angles, self.frame_memory, self.decay_weights())
        return y, type(state)(total, count)

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

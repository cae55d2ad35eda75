"""Context modes: which context tokens ``C_i`` each query i reads (docs/design.md, section 2).

A context mode is a small frozen object, one class per mode, that owns its aggregation
(the PyTorch form, :meth:`ContextMode.aggregate`) and its dense (B, M, N) mask (the test
oracle, :meth:`ContextMode.dense_mask`). The modes whose context sets are prefixes of
*segments* (:class:`Full`, :class:`Causal`, :class:`BlockCausal`, all subclasses of
:class:`SegmentMode`) also give their :class:`~polymixer.ops.aggregation.Segments`: from
them the token-chunked fused pass, the Triton kernels and the streaming state work with no
further code per mode. A new mode is a new class here (and its test): a segment mode gets
every path; any other mode runs the fused pass with its aggregation on whole tensors.

The keyword arguments accepted by every mixer of the package
(:class:`polymixer.PolynomialMixer`, :class:`polymixer.MultiHeadAttention`) are turned into
a mode by :func:`resolve_context`:

``context_mask``  (B, N) bool, True where a context token is real (padding mask).
``causal``        query i reads tokens j <= i (with ``cu_seqlens``: inside its sequence).
``block_size``    block-causal with blocks (frames) of T tokens; the last may be shorter.
``block_lengths`` block-causal with explicit consecutive block lengths (sum = N).
``cu_seqlens``    packed sequences: (S + 1,) cumulative lengths, 0 first and N last.
``mask``          dense (B, M, N) or (M, N) bool: the general, O(M*N) form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from . import aggregation as agg
from .aggregation import Segments
from .plan import compiling

__all__ = [
    "ContextMode", "SegmentMode", "Full", "Causal", "BlockCausal", "Packed", "Dense",
    "resolve_context", "aggregate", "dense_context_mask",
]


@dataclass(frozen=True, kw_only=True, eq=False)
class ContextMode:
    """Base of the context modes. ``context_mask: (B, N)`` bool padding mask or None.

    ``kind`` names the mode (in messages); ``streamable`` says whether a streaming state
    (tokens seen before, read by every query) can be combined with it.
    """

    kind: ClassVar[str] = "mode"
    streamable: ClassVar[bool] = False
    context_mask: torch.Tensor | None = None

    @property
    def shared_state(self) -> bool:
        """True when every query reads the same state (aggregate returns (B, 1, F))."""
        return False

    def segments(self, num_context: int) -> Segments | None:
        """The segment form of the mode (see :mod:`polymixer.ops.aggregation`), or None."""
        return None

    def aggregate(self, h: torch.Tensor, stream=None) -> torch.Tensor:
        """The PyTorch form: h (B, N, F) -> (B, 1 or M, F) in the accumulation dtype."""
        raise NotImplementedError

    def allowed(self, num_queries: int, num_context: int, device=None) -> torch.Tensor:
        """(M, N) bool: ``j in C_i`` before padding, written from the spec's definition."""
        raise NotImplementedError

    def dense_mask(self, batch: int, num_queries: int, num_context: int, device=None) -> torch.Tensor:
        """The (B, M, N) bool mask ``M[b, i, j] = (j in C_i)``, O(M*N): the test oracle."""
        m = self.allowed(num_queries, num_context, device).unsqueeze(0).expand(batch, -1, -1)
        if self.context_mask is not None:
            m = m & self.context_mask.to(device).unsqueeze(1)
        return m


def _token_index(num_queries: int, num_context: int, device):
    return torch.arange(num_queries, device=device).view(-1, 1), torch.arange(num_context, device=device).view(1, -1)


@dataclass(frozen=True, kw_only=True, eq=False)
class SegmentMode(ContextMode):
    """A mode whose context sets are built from segments: O(N), streamable."""

    streamable: ClassVar[bool] = True

    def aggregate(self, h: torch.Tensor, stream=None) -> torch.Tensor:
        """stream: optional ``(total (B, F), count (B,))`` of tokens seen before."""
        return agg.segment_aggregate(h, self.segments(h.shape[1]), self.context_mask, stream)


@dataclass(frozen=True, kw_only=True, eq=False)
class Full(SegmentMode):
    """Every query reads every (unpadded) context token."""

    kind: ClassVar[str] = "full"

    @property
    def shared_state(self) -> bool:
        return True

    def segments(self, num_context: int) -> Segments:
        return Segments(None, 1, prefix=False)

    def allowed(self, num_queries, num_context, device=None):
        return torch.ones(num_queries, num_context, dtype=torch.bool, device=device)


@dataclass(frozen=True, kw_only=True, eq=False)
class Causal(SegmentMode):
    """Query i reads the tokens j <= i."""

    kind: ClassVar[str] = "causal"

    def segments(self, num_context: int) -> Segments:
        return Segments(None, num_context, prefix=True)

    def allowed(self, num_queries, num_context, device=None):
        i, j = _token_index(num_queries, num_context, device)
        return j <= i


@dataclass(frozen=True, kw_only=True, eq=False)
class BlockCausal(SegmentMode):
    """Query i reads the tokens of its own block and of every earlier block.

    block_ids: (N,) non-decreasing block of every token; num_blocks: their number.
    """

    kind: ClassVar[str] = "block"
    block_ids: torch.Tensor
    num_blocks: int

    def segments(self, num_context: int) -> Segments:
        return Segments(self.block_ids, self.num_blocks, prefix=True)

    def allowed(self, num_queries, num_context, device=None):
        ids = self.block_ids.to(device)
        return ids.view(1, -1) <= ids.view(-1, 1)


@dataclass(frozen=True, kw_only=True, eq=False)
class Packed(ContextMode):
    """Packed sequences ``cu_seqlens: (S + 1,)``: query i reads the tokens of its own
    sequence (those j <= i when ``causal``)."""

    kind: ClassVar[str] = "packed"
    cu_seqlens: torch.Tensor
    causal: bool = False

    def aggregate(self, h: torch.Tensor, stream=None) -> torch.Tensor:
        return agg.mean_packed(h, self.cu_seqlens, self.causal, self.context_mask)

    def allowed(self, num_queries, num_context, device=None):
        seq = agg.segment_ids_from_cu_seqlens(self.cu_seqlens.to(device))
        m = seq.view(1, -1) == seq.view(-1, 1)
        if self.causal:
            i, j = _token_index(num_queries, num_context, device)
            m = m & (j <= i)
        return m


@dataclass(frozen=True, kw_only=True, eq=False)
class Dense(ContextMode):
    """Query i reads the tokens j with ``mask[b, i, j]``: (B, M, N) bool, O(M*N)."""

    kind: ClassVar[str] = "dense"
    mask: torch.Tensor

    def aggregate(self, h: torch.Tensor, stream=None) -> torch.Tensor:
        return agg.mean_dense(h, self.mask)

    def dense_mask(self, batch, num_queries, num_context, device=None):
        return self.mask.to(device)


def _check_bool_like(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.bool and (t.dtype.is_floating_point or t.dtype.is_complex):
        raise TypeError(
            f"{name}: expected a bool (or integer 0/1) tensor with True = token is used, "
            f"got dtype {t.dtype}; additive float masks are not supported"
        )


def resolve_context(
    batch: int,
    num_queries: int,
    num_context: int,
    *,
    context_mask: torch.Tensor | None = None,
    causal: bool = False,
    block_size: int | None = None,
    block_lengths: Sequence[int] | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> ContextMode:
    """Validate the context-mode keyword arguments and return the typed :class:`ContextMode`.

    batch, num_queries (M), num_context (N): the sizes of the call. Raises ValueError or
    TypeError naming the argument before any heavy work.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    chosen = [
        name
        for name, value in (
            ("block_size", block_size),
            ("block_lengths", block_lengths),
            ("cu_seqlens", cu_seqlens),
            ("mask", mask),
        )
        if value is not None
    ]
    if len(chosen) > 1:
        raise ValueError(f"give at most one of block_size, block_lengths, cu_seqlens, mask; got {chosen}")
    if causal and chosen and chosen[0] != "cu_seqlens":
        raise ValueError(f"causal=True cannot be combined with {chosen[0]}")
    needs_self = causal or (chosen and chosen[0] != "mask")
    if needs_self and num_queries != num_context:
        what = "causal" if causal else chosen[0]
        raise ValueError(
            f"{what}: needs as many queries as context tokens, got {num_queries} queries "
            f"and {num_context} context tokens"
        )

    if context_mask is not None:
        _check_bool_like("context_mask", context_mask)
        if context_mask.dim() != 2 or tuple(context_mask.shape) != (batch, num_context):
            raise ValueError(
                f"context_mask: expected shape (B, N) = ({batch}, {num_context}), "
                f"got {tuple(context_mask.shape)}"
            )
        if mask is not None:
            raise ValueError("context_mask cannot be combined with a dense mask; fold it into mask")
        context_mask = context_mask.bool()

    if mask is not None:
        _check_bool_like("mask", mask)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0).expand(batch, -1, -1)
        if mask.dim() != 3 or tuple(mask.shape) != (batch, num_queries, num_context):
            raise ValueError(
                f"mask: expected shape (B, M, N) = ({batch}, {num_queries}, {num_context}) "
                f"or (M, N), got {tuple(mask.shape)}"
            )
        return Dense(mask=mask.bool())

    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int):
            raise TypeError(f"block_size: expected an int, got {type(block_size).__name__}")
        if block_size < 1:
            raise ValueError(f"block_size: expected >= 1, got {block_size}")
        ids = agg.block_ids_from_size(num_context, block_size, device=device)
        num_blocks = -(-num_context // block_size)
        return BlockCausal(block_ids=ids, num_blocks=num_blocks, context_mask=context_mask)

    if block_lengths is not None:
        lengths = torch.as_tensor(block_lengths)
        if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"block_lengths: expected a 1-D sequence of ints, got {block_lengths!r}")
        if not compiling():
            values = lengths.tolist()
            if any(v < 1 for v in values) or sum(values) != num_context:
                raise ValueError(
                    f"block_lengths: expected positive lengths summing to N={num_context}, "
                    f"got {values}"
                )
        ids = agg.block_ids_from_lengths(lengths, device=device)
        return BlockCausal(block_ids=ids, num_blocks=lengths.numel(), context_mask=context_mask)

    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            cu_seqlens = torch.as_tensor(cu_seqlens)
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
            raise TypeError(
                f"cu_seqlens: expected a 1-D integer tensor, got dtype {cu_seqlens.dtype} "
                f"and shape {tuple(cu_seqlens.shape)}"
            )
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens: expected at least 2 entries, got {cu_seqlens.numel()}")
        if not compiling():
            values = cu_seqlens.tolist()
            if values[0] != 0 or values[-1] != num_context:
                raise ValueError(
                    f"cu_seqlens: expected to start at 0 and end at N={num_context}, got {values}"
                )
            if any(b < a for a, b in zip(values[:-1], values[1:])):
                raise ValueError(f"cu_seqlens: expected non-decreasing values, got {values}")
        return Packed(cu_seqlens=cu_seqlens.to(device=device, dtype=torch.long), causal=causal,
                      context_mask=context_mask)

    if causal:
        return Causal(context_mask=context_mask)
    return Full(context_mask=context_mask)


def aggregate(h: torch.Tensor, mode: ContextMode, prefix=None, backend: str = "torch") -> torch.Tensor:
    """The state each query reads: ``(B, 1, F)`` for the full mode, ``(B, M, F)`` otherwise.

    h: (B, N, F) context features; prefix: optional ``(total (B, F), count (B,))`` of
    tokens seen before, read by every query (streamable modes only). Float32 (float64 for
    float64 input). backend: ``"torch"`` (:meth:`ContextMode.aggregate`, default) or
    ``"triton"`` (:func:`polymixer.ops.triton.triton_aggregate`, segment modes). Which one a
    mixer call uses is the plan's decision (:func:`polymixer.ops.plan.aggregation_backend`,
    shown by ``execution_plan()``), not this function's.
    """
    if prefix is not None and not mode.streamable:
        raise ValueError(f"a streaming state cannot be combined with the {mode.kind} context mode")
    if backend == "triton":
        if prefix is not None:
            raise ValueError("backend: the Triton kernels take no streaming state")
        from .triton import triton_aggregate

        return triton_aggregate(h, mode)
    if backend != "torch":
        raise ValueError(f"backend: expected 'torch' or 'triton', got {backend!r}")
    return mode.aggregate(h, prefix)


def dense_context_mask(mode: ContextMode, batch: int, num_queries: int, num_context: int, device=None) -> torch.Tensor:
    """The (B, M, N) bool mask ``M[b, i, j] = (j in C_i)`` of any mode (:meth:`ContextMode.dense_mask`).

    O(M*N): used by the attention module and as the test oracle of the O(N) forms.
    """
    return mode.dense_mask(batch, num_queries, num_context, device)

"""Multi-head attention on PyTorch SDPA with the same interface as PolynomialMixer, and its
key-value cache for generating a sequence block after block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.context import dense_context_mask, resolve_context
from ._checks import check_positive_int, check_tokens

__all__ = ["MultiHeadAttention", "KVCache"]


@dataclass
class KVCache:
    """The keys and values ``(B, heads, L, head_dim)`` of the L tokens an attention layer
    has seen: its streaming state, which grows with every block (unlike PoM's)."""

    keys: torch.Tensor
    values: torch.Tensor
    block_lengths: tuple = ()  # tokens of each block held, oldest first (for a rolling window)
    resets_rows = False  # forgets all rows or none (see reset_)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "KVCache":
        return KVCache(self.keys.to(device=device, dtype=dtype), self.values.to(device=device, dtype=dtype),
                       self.block_lengths)

    def clone(self) -> "KVCache":
        return KVCache(self.keys.clone(), self.values.clone(), self.block_lengths)

    def detach(self) -> "KVCache":
        return KVCache(self.keys.detach(), self.values.detach(), self.block_lengths)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"keys": self.keys, "values": self.values}
        if self.block_lengths:
            out["block_lengths"] = torch.tensor(self.block_lengths, dtype=torch.int64)
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "KVCache":
        if not {"keys", "values"} <= set(state) <= {"keys", "values", "block_lengths"} \
                or state["keys"].shape != state["values"].shape or state["keys"].dim() != 4:
            raise ValueError(f"state: expected keys and values (B, heads, L, head_dim), got {sorted(state)}")
        lengths = tuple(int(n) for n in state["block_lengths"].tolist()) if "block_lengths" in state else ()
        if lengths and sum(lengths) != state["keys"].shape[2]:
            raise ValueError(f"state: block_lengths {lengths} do not add up to the {state['keys'].shape[2]} tokens held")
        return cls(state["keys"], state["values"], lengths)

    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def reset_(self, rows: torch.Tensor | None = None) -> "KVCache":
        """Forget every token, in place (an empty cache, as ``init_state`` makes): all rows
        only, since the rows share one length (a stream whose rows restart at different
        blocks keeps one cache per group of rows)."""
        if rows is not None and not bool(torch.as_tensor(rows).bool().all()):
            raise ValueError("rows: a KVCache forgets all its rows or none (they share one length); keep one "
                             "cache per group of rows that restart together")
        self.keys, self.values, self.block_lengths = self.keys[:, :, :0], self.values[:, :, :0], ()
        return self


class MultiHeadAttention(nn.Module):
    """Softmax attention (``torch.nn.functional.scaled_dot_product_attention``).

    Same call as :class:`PolynomialMixer`: ``attn(x, context=None, *, context_mask,
    causal, block_size, block_lengths, cu_seqlens, mask)`` with ``x: (B, M, D)``,
    ``context: (B, N, D)``, output ``(B, M, D)``, so a model switches mixer with one
    argument. The full mode uses SDPA without a mask (its fastest kernels), ``causal``
    its ``is_causal`` flag; other modes build the dense (B, M, N) mask, O(M*N) as
    attention is anyway. A query with an empty context reads zeros, as in PoM.

    Args:
        dim: token width D; heads: number of heads (must divide D); bias: biases of the
        projections; qk_norm: RMS-normalise queries and keys per head.
        window: with block-causal modes (``block_size``, ``block_lengths``), each block
            attends to itself and the ``window - 1`` blocks before it only (a video frame to
            the last ``window`` frames); streaming then keeps a rolling cache of those
            blocks, constant in size. None (default): every earlier block.
    """

    def __init__(self, dim: int, heads: int = 8, bias: bool = True, qk_norm: bool = False, device=None, dtype=None,
                 *, window: int | None = None):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        if dim % heads != 0:
            raise ValueError(f"heads: {heads} does not divide dim={dim}")
        if window is not None:
            check_positive_int("window", window)
        self.window = window
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(dim, dim, bias=bias, **kw)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=bias, **kw)
        self.out_proj = nn.Linear(dim, dim, bias=bias, **kw)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, **kw)
            self.k_norm = nn.RMSNorm(self.head_dim, **kw)

    @property
    def constant_state(self) -> bool:
        """A rolling window keeps a constant-size cache; the full cache grows with every block."""
        return self.window is not None

    def extra_repr(self) -> str:
        window = "" if self.window is None else f", window={self.window}"
        return f"dim={self.dim}, heads={self.heads}, qk_norm={self.qk_norm}{window}"

    def _qkv(self, x: torch.Tensor, ctx: torch.Tensor):
        B, M, N = x.shape[0], x.shape[1], ctx.shape[1]
        q = self.q_proj(x).view(B, M, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(ctx).view(B, N, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    # ---------------------------------------------------------------- streaming
    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty key-value cache for ``batch_size`` sequences (the layer's device and dtype by default)."""
        check_positive_int("batch_size", batch_size)
        weight = self.out_proj.weight
        empty = torch.zeros(batch_size, self.heads, 0, self.head_dim, device=device or weight.device,
                            dtype=dtype or weight.dtype)
        return KVCache(empty, empty.clone())

    def step(self, x: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Feed the next block ``x: (B, t, D)``: every token attends to the cached tokens and
        to the whole block; returns ``(y (B, t, D), cache with the block appended)``. Block by
        block this equals the block-causal forward; ``state`` is not modified."""
        check_tokens("x", x, self.dim)
        if not isinstance(state, KVCache):
            raise TypeError(f"state: expected a KVCache, got {type(state).__name__}")
        if state.batch_size != x.shape[0]:
            raise ValueError(f"state: batch size {state.batch_size} does not match the input's {x.shape[0]}")
        B, M = x.shape[:2]
        q, k, v = self._qkv(x, x)
        keys, values, lengths = state.keys, state.values, state.block_lengths
        if self.window is not None and len(lengths) >= self.window:  # drop the blocks that leave the window
            drop = sum(lengths[:len(lengths) - self.window + 1])
            keys, values = keys[:, :, drop:], values[:, :, drop:]
            lengths = lengths[len(lengths) - self.window + 1:]
        keys = torch.cat([keys, k.to(keys.dtype)], dim=2)
        values = torch.cat([values, v.to(values.dtype)], dim=2)
        out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype))
        return (self.out_proj(out.transpose(1, 2).reshape(B, M, self.dim)),
                KVCache(keys, values, lengths + (M,)))

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
    ) -> torch.Tensor:
        """Attend from ``x: (B, M, D)`` to ``context: (B, N, D)`` (default x); returns (B, M, D)."""
        check_tokens("x", x, self.dim)
        if context is not None:
            check_tokens("context", context, self.dim, batch=x.shape[0])
        ctx = x if context is None else context
        B, M, N = x.shape[0], x.shape[1], ctx.shape[1]
        mode = resolve_context(
            B, M, N, context_mask=context_mask, causal=causal, block_size=block_size,
            block_lengths=block_lengths, cu_seqlens=cu_seqlens, mask=mask, device=x.device,
        )
        q, k, v = self._qkv(x, ctx)
        empty = None
        if mode.kind == "full" and mode.context_mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
        elif mode.kind == "causal" and mode.context_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            allowed = dense_context_mask(mode, B, M, N, device=x.device)
            if self.window is not None and mode.kind == "block":  # the last `window` blocks only
                ids = mode.block_ids.to(x.device)
                allowed = allowed & (ids.view(1, 1, -1) > ids.view(1, -1, 1) - self.window)
            empty = ~allowed.any(dim=-1)  # (B, M)
            # Rows with no context would be NaN: let them attend anywhere, zero them after.
            allowed = allowed | empty.unsqueeze(-1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1))
        out = out.transpose(1, 2).reshape(B, M, self.dim)
        if empty is not None:
            out = out.masked_fill(empty.unsqueeze(-1), 0.0)
        return self.out_proj(out)

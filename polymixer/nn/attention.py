"""Multi-head attention on PyTorch SDPA with the same interface as PolynomialMixer."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.context import dense_context_mask, resolve_context
from ._checks import check_positive_int, check_tokens

__all__ = ["MultiHeadAttention"]


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
    """

    def __init__(self, dim: int, heads: int = 8, bias: bool = True, qk_norm: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        if dim % heads != 0:
            raise ValueError(f"heads: {heads} does not divide dim={dim}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(dim, dim, bias=bias, **kw)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=bias, **kw)
        self.out_proj = nn.Linear(dim, dim, bias=bias, **kw)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, **kw)
            self.k_norm = nn.RMSNorm(self.head_dim, **kw)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, qk_norm={self.qk_norm}"

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
        q = self.q_proj(x).view(B, M, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(ctx).view(B, N, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        empty = None
        if mode.kind == "full" and mode.context_mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
        elif mode.kind == "causal" and mode.context_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            allowed = dense_context_mask(mode, B, M, N, device=x.device)
            empty = ~allowed.any(dim=-1)  # (B, M)
            # Rows with no context would be NaN: let them attend anywhere, zero them after.
            allowed = allowed | empty.unsqueeze(-1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1))
        out = out.transpose(1, 2).reshape(B, M, self.dim)
        if empty is not None:
            out = out.masked_fill(empty.unsqueeze(-1), 0.0)
        return self.out_proj(out)

"""Slow, obviously correct reference forms: the oracle of the tests.

Everything here builds the dense (B, M, N) context mask of a mode from token indices and
averages with explicit loops. Never use it on long sequences: it is O(M*N).
"""

from __future__ import annotations

import torch

from .aggregation import accumulation_dtype
from .context import ContextMode, dense_context_mask

__all__ = ["reference_mean", "reference_aggregate"]


def reference_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Loop form of the masked mean: ``out[b, i] = mean(h[b, j] for j with mask[b, i, j])``.

    h: (B, N, F); mask: (B, M, N) bool. An empty row gives zeros. Returns (B, M, F) in the
    accumulation dtype (float32, float64 for float64 input).
    """
    acc = accumulation_dtype(h.dtype)
    h = h.to(acc)
    rows = []
    for b in range(h.shape[0]):
        per_query = []
        for i in range(mask.shape[1]):
            chosen = h[b][mask[b, i]]  # (|C_i|, F); an empty sum is zero
            per_query.append(chosen.sum(dim=0) / max(chosen.shape[0], 1))
        rows.append(torch.stack(per_query))
    return torch.stack(rows)


def reference_aggregate(h: torch.Tensor, mode: ContextMode, num_queries: int) -> torch.Tensor:
    """The per-query state of any context mode through its dense mask. Returns (B, M, F)."""
    mask = dense_context_mask(mode, h.shape[0], num_queries, h.shape[1], device=h.device)
    return reference_mean(h, mask)

"""Slow, obviously correct reference forms: the oracle of the tests.

Everything here builds the dense (B, M, N) context mask of a mode from token indices and
averages with explicit loops. Never use it on long sequences: it is O(M*N).
"""

from __future__ import annotations

import torch

from .aggregation import accumulation_dtype
from .context import ContextMode, dense_context_mask

__all__ = ["reference_mean", "reference_aggregate"]


def reference_mean(h: torch.Tensor, mask: torch.Tensor, queries_per_step: int = 16) -> torch.Tensor:
    """Masked mean written out: ``out[b, i] = sum_j [mask[b, i, j]] h[b, j] / |C_i|``.

    h: (B, N, F); mask: (B, M, N) bool. An empty context gives zeros. Loops over batch
    rows and small groups of queries, each group as an explicit (queries, N, F) masked
    sum, so memory stays bounded. Returns (B, M, F) in the accumulation dtype (float32,
    float64 for float64 input).
    """
    acc = accumulation_dtype(h.dtype)
    h = h.to(acc)
    rows = []
    for b in range(h.shape[0]):
        groups = []
        for start in range(0, mask.shape[1], queries_per_step):
            m = mask[b, start:start + queries_per_step]  # (q, N)
            picked = torch.where(m.unsqueeze(-1), h[b].unsqueeze(0), torch.zeros((), dtype=acc))
            count = m.sum(dim=-1, keepdim=True).clamp_min(1).to(acc)
            groups.append(picked.sum(dim=1) / count)
        rows.append(torch.cat(groups))
    return torch.stack(rows)


def reference_aggregate(h: torch.Tensor, mode: ContextMode, num_queries: int) -> torch.Tensor:
    """The per-query state of any context mode through its dense mask. Returns (B, M, F)."""
    mask = dense_context_mask(mode, h.shape[0], num_queries, h.shape[1], device=h.device)
    return reference_mean(h, mask)

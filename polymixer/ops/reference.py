"""Slow, obviously correct reference forms: the oracle of the tests.

Everything here builds the dense (B, M, N) context mask of a mode from token indices and
averages with explicit loops. Never use it on long sequences: it is O(M*N).
"""

from __future__ import annotations

import torch

from .aggregation import accumulation_dtype
from .context import ContextMode, dense_context_mask

__all__ = ["reference_mean", "reference_aggregate", "reference_frame_memory"]


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


def reference_frame_memory(h: torch.Tensor, context: torch.Tensor, mode: ContextMode, memory, decay=None,
                           num_queries: int | None = None) -> torch.Tensor:
    """The state of a frame memory (:mod:`polymixer.ops.frame_memory`) through an explicit
    (B, M, N, F) weights matrix, written from its definition with loops over frames.

    Query i of frame f gives context token j of frame g <= f the weight (per channel)
    ``Π_{g<e<=f} γ_e`` (decay: ``γ^(f-g)``; gated-decay: ``γ_e = sigmoid(W x̄_e + b)``, the
    frame means ``x̄_e`` taken token by token) or ``[f - g < W]`` (window:W), 0 for a padded
    token; ``H_i = Σ_j w_ij h_j / Σ_j w_ij`` per channel (0 where the weights are all 0).
    h: (B, N, F); context: (B, N, D); mode: block-causal or full. Returns (B, M, F).
    """
    acc = accumulation_dtype(h.dtype)
    h = h.to(acc)
    B, N, width = h.shape
    if mode.kind == "full":
        frame = torch.zeros(N, dtype=torch.long)
    elif mode.kind == "block":
        frame = mode.block_ids.cpu()
    else:
        raise ValueError(f"mode: frames are blocks of the block-causal mode, or one frame (full), not {mode.kind}")
    G = int(frame.max()) + 1 if N else 0
    real = torch.ones(B, N, dtype=acc) if mode.context_mask is None else mode.context_mask.to(acc).cpu()
    real = real.to(h.device)
    # gamma[b, e]: (F,) the decay the frame e applies to the frames before it
    gamma = [[None] * G for _ in range(B)]
    if memory.decays:
        for b in range(B):
            for e in range(G):
                tokens = [j for j in range(N) if int(frame[j]) == e and real[b, j] > 0]
                x_mean = torch.zeros(context.shape[-1], dtype=acc, device=h.device)
                for j in tokens:
                    x_mean = x_mean + context[b, j].to(acc)
                x_mean = x_mean / max(len(tokens), 1)
                logit = decay.bias.to(acc)
                if decay.weight is not None:
                    logit = logit + decay.weight.to(acc) @ x_mean
                gamma[b][e] = torch.sigmoid(logit)
    M = N if num_queries is None else num_queries
    weights = torch.zeros(B, M, N, width, dtype=acc, device=h.device)
    for b in range(B):
        for i in range(M):
            f = int(frame[i]) if mode.kind == "block" else 0
            for j in range(N):
                g = int(frame[j])
                if g > f or real[b, j] == 0:
                    continue
                if memory.kind == "window":
                    if f - g < memory.window:
                        weights[b, i, j] = 1.0
                else:
                    w = torch.ones(width, dtype=acc, device=h.device)
                    for e in range(g + 1, f + 1):
                        w = w * gamma[b][e]
                    weights[b, i, j] = w
    total = (weights * h.unsqueeze(1)).sum(2)
    norm = weights.sum(2)
    return total / torch.where(norm > 0, norm, torch.ones((), dtype=acc))

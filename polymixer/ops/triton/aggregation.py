"""Triton kernels of the aggregation: full, padded, causal and block-causal means.

Importing this module imports Triton; :mod:`polymixer.ops.triton` imports it lazily.

Three kernels, each working on a tile of ``BLOCK_F`` channels of one batch row, in the
accumulation dtype (float32; float64 for float64 input) whatever the dtype of the input:

``chunk sums``  ``partial[b, c] = sum_{i in chunk c} pre[b, i] * x[b, i]``: a program
                walks its chunk of tokens in tiles of ``BLOCK_N`` rows and reduces them
                in registers. The full mode is this reduction (then a sum over the few
                chunks and a division by the count); the scans use it for their carries.
``scan``        an inclusive prefix (or, reversed, suffix) sum along N of ``pre * x``: a
                program walks its chunk tile by tile, scans each tile (``tl.cumsum``) and
                adds the running sum of the tiles before, which stays in registers. It
                starts from ``carry[b, c]``, the sum of the chunks before its own (computed
                from the chunk sums), so many programs share one sequence. The result,
                times ``post``, is written for every token (causal), or only at the last
                token of each block (first, reversed) into a (B, blocks, F) buffer
                (block-causal: the prefix over blocks of the per-block sums).
``gather``      ``out[b, i] = post[b, i] * src[b, ids[i]]``: broadcasts per-block states
                to their tokens (block-causal), or one state to every token (the backward
                of the full mode).

Forward and backward (the adjoint of this linear map) are the same three kernels:

| mode   | forward                                       | backward (d: gradient of the state)           |
|--------|-----------------------------------------------|-----------------------------------------------|
| full   | chunk sums of w*h, / count                    | gather (broadcast) of sum(d) / count, times w |
| causal | scan of w*h, times 1/count_i                  | reversed scan of d/count_i, times w           |
| block  | scan of w*h stored at block ends, / count_blk | reversed scan of d/count_blk(i) stored at     |
|        | then gather to tokens                         | block starts, gather to tokens, times w       |

(w: the padding mask as 0/1, or 1; count_i: the number of context tokens of query i.)
Without a padding mask the full-mode gradient is one (B, 1, F) row returned as a
broadcast view, as PyTorch's own ``sum`` backward gives. No N x N tensor is built; the
only (B, N) tensors made with PyTorch are the counts (and the block index of each token).
The tile sizes were chosen from the register counts of the sm_90 build, not from
timings (none yet): tune ``_BLOCK_N``, ``_MAX_BLOCK_F``, ``_NUM_WARPS`` on a GPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import aggregation as agg
from ..aggregation import Segments

__all__ = ["triton_aggregate"]


# ----------------------------------------------------------------------------- kernels
# Plain functions, turned into Triton kernels by _kernels(): triton.jit decides when it
# decorates a function whether it builds a compiled or an interpreted kernel (from
# TRITON_INTERPRET), so both flavours are built on demand, from the flag at call time.


def _chunk_sums_kernel(
    x_ptr, pre_ptr, out_ptr,
    N, F, CHUNK,
    sx_b, sx_n, sx_f,
    sp_b, sp_n,
    so_b, so_c, so_f,
    HAS_PRE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_f = tl.program_id(1)
    pid_c = tl.program_id(2)
    acc_dtype = out_ptr.dtype.element_ty
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    start = pid_c * CHUNK
    end = tl.minimum(start + CHUNK, N)
    x_row = x_ptr + pid_b.to(tl.int64) * sx_b
    total = tl.zeros([BLOCK_F], dtype=acc_dtype)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        ptrs = x_row + offs_n.to(tl.int64)[:, None] * sx_n + offs_f[None, :] * sx_f
        x = tl.load(ptrs, mask=mask_n[:, None] & mask_f[None, :], other=0.0).to(acc_dtype)
        if HAS_PRE:
            p = tl.load(pre_ptr + pid_b * sp_b + offs_n * sp_n, mask=mask_n, other=0.0).to(acc_dtype)
            x = x * p[:, None]
        total += tl.sum(x, axis=0)
    tl.store(out_ptr + pid_b.to(tl.int64) * so_b + pid_c * so_c + offs_f * so_f, total, mask=mask_f)


def _scan_kernel(
    x_ptr, pre_ptr, post_ptr, carry_ptr, out_ptr, ids_ptr, edge_ptr,
    N, F, CHUNK,
    sx_b, sx_n, sx_f,
    sp_b, sp_n,
    sq_b, sq_n,
    sc_b, sc_c, sc_f,
    so_b, so_n, so_f,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_CARRY: tl.constexpr,
    REVERSE: tl.constexpr, TO_BLOCKS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_f = tl.program_id(1)
    pid_c = tl.program_id(2)
    acc_dtype = carry_ptr.dtype.element_ty
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    start = pid_c * CHUNK
    end = tl.minimum(start + CHUNK, N)
    num_tiles = tl.cdiv(end - start, BLOCK_N)
    x_row = x_ptr + pid_b.to(tl.int64) * sx_b
    out_row = out_ptr + pid_b.to(tl.int64) * so_b
    if HAS_CARRY:
        carry = tl.load(carry_ptr + pid_b.to(tl.int64) * sc_b + pid_c * sc_c + offs_f * sc_f,
                        mask=mask_f, other=0.0)
    else:
        carry = tl.zeros([BLOCK_F], dtype=acc_dtype)
    for t in range(0, num_tiles):
        if REVERSE:
            offs_n = end - (t + 1) * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n >= start
        else:
            offs_n = start + t * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < end
        mask = mask_n[:, None] & mask_f[None, :]
        ptrs = x_row + offs_n.to(tl.int64)[:, None] * sx_n + offs_f[None, :] * sx_f
        x = tl.load(ptrs, mask=mask, other=0.0).to(acc_dtype)
        if HAS_PRE:
            p = tl.load(pre_ptr + pid_b * sp_b + offs_n * sp_n, mask=mask_n, other=0.0).to(acc_dtype)
            x = x * p[:, None]
        run = tl.cumsum(x, axis=0, reverse=REVERSE) + carry[None, :]
        carry += tl.sum(x, axis=0)
        if HAS_POST:
            q = tl.load(post_ptr + pid_b * sq_b + offs_n * sq_n, mask=mask_n, other=0.0).to(acc_dtype)
            run = run * q[:, None]
        if TO_BLOCKS:
            # Only the token at the edge of its block (its last token, or its first when
            # reversed) holds the block's value: store it in the block's row.
            ids = tl.load(ids_ptr + offs_n, mask=mask_n, other=0)
            edge = tl.load(edge_ptr + offs_n, mask=mask_n, other=0) != 0
            dst = out_row + ids.to(tl.int64)[:, None] * so_n + offs_f[None, :] * so_f
            tl.store(dst, run.to(out_ptr.dtype.element_ty), mask=mask & edge[:, None])
        else:
            dst = out_row + offs_n.to(tl.int64)[:, None] * so_n + offs_f[None, :] * so_f
            tl.store(dst, run.to(out_ptr.dtype.element_ty), mask=mask)


def _gather_kernel(
    src_ptr, ids_ptr, post_ptr, out_ptr,
    N, F,
    ss_b, ss_k, ss_f,
    sq_b, sq_n,
    so_b, so_n, so_f,
    HAS_IDS: tl.constexpr, HAS_POST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_f = tl.program_id(1)
    pid_n = tl.program_id(2)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask = mask_n[:, None] & mask_f[None, :]
    if HAS_IDS:
        rows = tl.load(ids_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    else:
        rows = tl.zeros([BLOCK_N], dtype=tl.int64)
    src = src_ptr + pid_b.to(tl.int64) * ss_b + rows[:, None] * ss_k + offs_f[None, :] * ss_f
    v = tl.load(src, mask=mask, other=0.0)
    if HAS_POST:
        q = tl.load(post_ptr + pid_b * sq_b + offs_n * sq_n, mask=mask_n, other=0.0).to(v.dtype)
        v = v * q[:, None]
    dst = out_ptr + pid_b.to(tl.int64) * so_b + offs_n.to(tl.int64)[:, None] * so_n + offs_f[None, :] * so_f
    tl.store(dst, v.to(out_ptr.dtype.element_ty), mask=mask)


class _Kernels:
    def __init__(self):
        self.chunk_sums = triton.jit(_chunk_sums_kernel)
        self.scan = triton.jit(_scan_kernel)
        self.gather = triton.jit(_gather_kernel)


@functools.lru_cache(maxsize=2)
def _kernels_for(interpret: bool) -> _Kernels:
    # triton.jit reads TRITON_INTERPRET itself; the key only keeps the two flavours apart.
    return _Kernels()


def _kernels() -> _Kernels:
    from . import triton_interpreting

    return _kernels_for(triton_interpreting())


# ----------------------------------------------------------------------------- launch
# Tile: _BLOCK_N tokens x _MAX_BLOCK_F channels. On sm_90 with 4 warps, a 32 x 64 scan tile
# compiles to about 146 registers per thread and no spills (64 x 64: about 220, which
# halves the resident warps). The interpreter runs one Python step per tile: taller tiles.
_BLOCK_N = 32
_BLOCK_N_INTERPRETED = 64
_MAX_BLOCK_F = 64
_NUM_WARPS = 4


def _row_strides(v: torch.Tensor | None) -> tuple[int, int]:
    """Strides (batch, token) of a (B, N) or (1, N) per-token vector (batch stride 0 if shared)."""
    if v is None:
        return 0, 0
    return (0 if v.shape[0] == 1 else v.stride(0)), v.stride(1)


class _Tiling:
    """Launch geometry of the kernels: tile sizes and the split of N into chunks (one program per
    chunk, channel tile, row). Which path runs is the ExecutionPlan's (ops/plan.py); this is
    only how the chosen kernels tile their work."""

    def __init__(self, h_like: torch.Tensor, batch: int, num_tokens: int, width: int, chunk_size: int | None):
        self.block_f = min(_MAX_BLOCK_F, max(16, triton.next_power_of_2(width)))
        self.f_tiles = triton.cdiv(width, self.block_f)
        n = max(num_tokens, 1)
        block_n = _BLOCK_N if h_like.is_cuda else _BLOCK_N_INTERPRETED
        if chunk_size is not None:
            self.block_n = min(block_n, max(16, triton.next_power_of_2(chunk_size)))
            chunk = triton.cdiv(chunk_size, self.block_n) * self.block_n
        else:
            self.block_n = block_n
            if h_like.is_cuda:
                # Enough programs to fill the GPU: about 4 per streaming multiprocessor.
                sms = torch.cuda.get_device_properties(h_like.device).multi_processor_count
                want = triton.cdiv(4 * sms, batch * self.f_tiles)
                chunk = triton.cdiv(triton.cdiv(n, max(want, 1)), self.block_n) * self.block_n
                chunk = max(chunk, 4 * self.block_n)  # long enough walks to amortise the carry
            else:
                chunk = triton.cdiv(n, self.block_n) * self.block_n  # interpreter: one chunk
        self.chunk = chunk
        self.chunks = triton.cdiv(n, chunk)


def _chunk_sums(k: _Kernels, tiles: _Tiling, x: torch.Tensor, pre: torch.Tensor | None, acc: torch.dtype):
    """(B, chunks, F) sums of ``pre * x`` over each chunk of tokens."""
    B, N, F = x.shape
    out = torch.empty(B, tiles.chunks, F, dtype=acc, device=x.device)
    sp_b, sp_n = _row_strides(pre)
    k.chunk_sums[(B, tiles.f_tiles, tiles.chunks)](
        x, x if pre is None else pre, out,
        N, F, tiles.chunk,
        x.stride(0), x.stride(1), x.stride(2),
        sp_b, sp_n,
        out.stride(0), out.stride(1), out.stride(2),
        HAS_PRE=pre is not None, BLOCK_N=tiles.block_n, BLOCK_F=tiles.block_f,
        num_warps=_NUM_WARPS,
    )
    return out


def _carries(k, tiles, x, pre, acc, reverse: bool):
    """Sum of the chunks before each chunk (after it when reversed), or None for one chunk."""
    if tiles.chunks == 1:
        return None
    partial = _chunk_sums(k, tiles, x, pre, acc)
    carry = torch.zeros_like(partial)
    if reverse:
        carry[:, :-1] = partial.flip(1).cumsum(1).flip(1)[:, 1:]
    else:
        carry[:, 1:] = partial.cumsum(1)[:, :-1]
    return carry


def _scan(k, tiles, x, pre, post, out, acc, *, reverse: bool, ids=None, edge=None):
    """Scan of ``pre * x`` along N (times ``post``) into ``out`` (per token, or per block)."""
    B, N, F = x.shape
    carry = _carries(k, tiles, x, pre, acc, reverse)
    carry_arg = carry if carry is not None else torch.empty(1, dtype=acc, device=x.device)
    sc = carry.stride() if carry is not None else (0, 0, 0)
    sp_b, sp_n = _row_strides(pre)
    sq_b, sq_n = _row_strides(post)
    to_blocks = ids is not None
    k.scan[(B, tiles.f_tiles, tiles.chunks)](
        x, x if pre is None else pre, x if post is None else post, carry_arg, out,
        ids if to_blocks else x, edge if to_blocks else x,
        N, F, tiles.chunk,
        x.stride(0), x.stride(1), x.stride(2),
        sp_b, sp_n,
        sq_b, sq_n,
        sc[0], sc[1], sc[2],
        out.stride(0), out.stride(1), out.stride(2),
        HAS_PRE=pre is not None, HAS_POST=post is not None, HAS_CARRY=carry is not None,
        REVERSE=reverse, TO_BLOCKS=to_blocks,
        BLOCK_N=tiles.block_n, BLOCK_F=tiles.block_f,
        num_warps=_NUM_WARPS,
    )


def _gather(k, tiles, src, ids, post, out):
    """``out[b, i] = post[b, i] * src[b, ids[i]]`` (``src[b, 0]`` without ids)."""
    B, N, F = out.shape
    sq_b, sq_n = _row_strides(post)
    grid = (B, tiles.f_tiles, triton.cdiv(N, tiles.block_n))
    k.gather[grid](
        src, out if ids is None else ids, out if post is None else post, out,
        N, F,
        src.stride(0), src.stride(1), src.stride(2),
        sq_b, sq_n,
        out.stride(0), out.stride(1), out.stride(2),
        HAS_IDS=ids is not None, HAS_POST=post is not None,
        BLOCK_N=tiles.block_n, BLOCK_F=tiles.block_f,
        num_warps=_NUM_WARPS,
    )


# ----------------------------------------------------------------------------- counts
def _weights(mask: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor | None:
    return None if mask is None else mask.to(acc)


def _inverse_counts(seg: Segments, w, num_tokens, acc, device):
    """(B or 1, N): 1 / max(count, 1) of each token's set (tokens of all segments <= its own):
    the counts of the PyTorch form, :func:`polymixer.ops.aggregation.segment_counts`."""
    count = agg.segment_counts(seg, w, num_tokens, acc, device).cumsum(dim=1)
    return seg.read(count.clamp_min(1).reciprocal().unsqueeze(-1)).squeeze(-1)


def _block_edges(ids: torch.Tensor, last: bool) -> torch.Tensor:
    """(N,) int8: 1 at the last (or first) token of each block."""
    edge = torch.ones_like(ids, dtype=torch.int8)
    if ids.numel() > 1:
        if last:
            edge[:-1] = (ids[1:] != ids[:-1]).to(torch.int8)
        else:
            edge[1:] = (ids[1:] != ids[:-1]).to(torch.int8)
    return edge


# ----------------------------------------------------------------------------- forward / backward
def _forward(h, seg: Segments, mask, chunk_size):
    B, N, F = h.shape
    acc = agg.accumulation_dtype(h.dtype)
    k = _kernels()
    tiles = _Tiling(h, B, N, F, chunk_size)
    w = _weights(mask, acc)
    if seg.shared:
        count = agg.segment_counts(seg, w, N, acc, h.device)  # (B or 1, 1)
        total = _chunk_sums(k, tiles, h, w, acc).sum(dim=1, keepdim=True)  # (B, 1, F)
        return total / count.clamp_min(1).unsqueeze(-1)
    inv = _inverse_counts(seg, w, N, acc, h.device)
    out = torch.empty(B, N, F, dtype=acc, device=h.device)
    if seg.per_token:
        _scan(k, tiles, h, w, inv, out, acc, reverse=False)
        return out
    # block: prefix sums read at the last token of each block, then broadcast to its tokens
    block_state = torch.zeros(B, seg.count, F, dtype=acc, device=h.device)
    _scan(k, tiles, h, w, inv, block_state, acc, reverse=False, ids=seg.ids, edge=_block_edges(seg.ids, last=True))
    _gather(k, tiles, block_state, seg.ids, None, out)
    return out


def _backward(d_state, seg: Segments, mask, num_tokens, h_dtype, chunk_size):
    B, F = d_state.shape[0], d_state.shape[-1]
    N = num_tokens
    acc = agg.accumulation_dtype(h_dtype)
    k = _kernels()
    tiles = _Tiling(d_state, B, N, F, chunk_size)
    w = _weights(mask, acc)
    if seg.shared:
        count = agg.segment_counts(seg, w, N, acc, d_state.device)
        g = d_state.to(acc).sum(dim=1, keepdim=True) / count.clamp_min(1).unsqueeze(-1)  # (B, 1, F)
        if w is None:  # the same gradient for every token: a broadcast view, as PyTorch's sum gives
            return g.to(h_dtype).expand(B, N, F)
        dh = torch.empty(B, N, F, dtype=h_dtype, device=d_state.device)
        _gather(k, tiles, g, None, w, dh)
        return dh
    inv = _inverse_counts(seg, w, N, acc, d_state.device)
    dh = torch.empty(B, N, F, dtype=h_dtype, device=d_state.device)
    if seg.per_token:
        # dh_j = w_j * sum_{i >= j} d_i / count_i: a reversed scan.
        _scan(k, tiles, d_state, inv, w, dh, acc, reverse=True)
        return dh
    # block: dh_j = w_j * sum over blocks >= block(j) of (sum of d in the block) / count_block,
    # a reversed scan read at the first token of each block, then broadcast.
    block_grad = torch.zeros(B, seg.count, F, dtype=acc, device=d_state.device)
    _scan(k, tiles, d_state, inv, None, block_grad, acc, reverse=True, ids=seg.ids,
          edge=_block_edges(seg.ids, last=False))
    _gather(k, tiles, block_grad, seg.ids, w, dh)
    return dh


class _TritonAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, seg, mask, chunk_size):
        ctx.save_for_backward(mask)
        ctx.seg, ctx.chunk_size = seg, chunk_size
        ctx.num_tokens, ctx.h_dtype = h.shape[1], h.dtype
        return _forward(h, seg, mask, chunk_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_state):
        (mask,) = ctx.saved_tensors
        dh = None
        if ctx.needs_input_grad[0]:
            dh = _backward(d_state, ctx.seg, mask, ctx.num_tokens, ctx.h_dtype, ctx.chunk_size)
        return dh, None, None, None


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def triton_aggregate(h: torch.Tensor, mode, *, chunk_size: int | None = None) -> torch.Tensor:
    """See :func:`polymixer.ops.triton.triton_aggregate`."""
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        raise ValueError(f"h: expected a (B, N, F) tensor, got {getattr(h, 'shape', type(h).__name__)}")
    if h.dtype not in _DTYPES:
        raise TypeError(f"h: expected one of {_DTYPES}, got dtype {h.dtype}")
    B, N, F = h.shape
    seg = mode.segments(N)
    if seg is None:
        raise ValueError(f"mode: the Triton kernels implement the segment modes (full, causal, block), "
                         f"got {mode.kind!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    mask = mode.context_mask
    if mask is not None:
        if tuple(mask.shape) != (B, N):
            raise ValueError(f"mode.context_mask: expected shape ({B}, {N}), got {tuple(mask.shape)}")
        mask = mask.to(device=h.device, dtype=torch.bool).contiguous()
    if seg.ids is not None:
        if seg.ids.shape != (N,):
            raise ValueError(f"mode: expected block ids of shape ({N},), got {tuple(seg.ids.shape)}")
        seg = Segments(seg.ids.to(device=h.device, dtype=torch.int64).contiguous(), seg.count, seg.prefix)
    if B == 0 or F == 0 or N == 0:  # nothing to launch: the PyTorch form has the right shapes
        return mode.aggregate(h)
    return _TritonAggregate.apply(h, seg, mask, chunk_size)

"""Optional Triton kernels of the O(N) aggregations (forward and backward).

Nothing here imports Triton until it is needed: the package works without Triton, and
:func:`triton_available` is cheap on tensors that are neither on a GPU nor interpreted.

``triton_aggregate(h, mode)`` computes the same state as the PyTorch form
(:meth:`polymixer.ops.context.ContextMode.aggregate`) for every segment mode (full,
optionally padded, causal and block-causal), with float32 accumulation whatever the dtype
of ``h``; its backward pass is the adjoint written with the same kernels. Whether it runs
is decided by :func:`polymixer.ops.plan.aggregation_backend` (by default on CUDA
tensors). On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``),
far too slowly for anything but tests (``MixerSettings(triton="on")``).
"""

from __future__ import annotations

import torch

__all__ = ["triton_available", "triton_interpreting", "triton_aggregate"]

_IMPORTABLE: bool | None = None


def _triton_importable() -> bool:
    global _IMPORTABLE
    if _IMPORTABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception:  # ImportError, or a broken install (missing driver libraries)
            _IMPORTABLE = False
        else:
            _IMPORTABLE = True
    return _IMPORTABLE


def triton_interpreting() -> bool:
    """True when Triton would build interpreted kernels now (``TRITON_INTERPRET=1``).

    Read at every call, the way ``triton.jit`` reads it when it decorates a function.
    """
    if not _triton_importable():
        return False
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    import os

    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(t: torch.Tensor) -> bool:
    """True when the Triton kernels can run on tensor ``t``.

    That is: Triton imports and ``t`` is a CUDA tensor, or ``TRITON_INTERPRET=1`` and ``t``
    is on the CPU (Triton's interpreter; slow, for tests), provided Triton was imported
    with that flag already set.
    """
    if not isinstance(t, torch.Tensor) or t.device.type not in ("cuda", "cpu"):
        return False
    if not _triton_importable():
        return False
    if t.is_cuda:
        return True
    return triton_interpreting() and _interpreter_ready()


def _interpreter_ready() -> bool:
    """False when Triton was imported before ``TRITON_INTERPRET=1`` was set.

    Triton's own helpers (``tl.sum``, ``tl.cumsum``, ...) are decorated when
    ``triton.language`` is imported; if that happened with the flag off, they are compiled
    functions that the interpreter cannot call, and interpreted kernels fail.
    """
    import triton.language as tl

    helper = getattr(getattr(tl, "standard", None), "sum", None)
    return helper is None or type(helper).__name__ != "JITFunction"


def triton_aggregate(h: torch.Tensor, mode, *, chunk_size: int | None = None) -> torch.Tensor:
    """``aggregate(h, mode)`` through the Triton kernels (differentiable).

    h: (B, N, F) float32/bfloat16/float16 (or float64) context features; mode: a
    segment :class:`~polymixer.ops.context.ContextMode` (full, causal or block-causal,
    with an optional ``context_mask``). Returns (B, 1, F) for full and (B, N, F) otherwise, in
    float32 (float64 for float64 input). chunk_size: tokens walked by one program along
    N (rounded up to the tile height); None picks one that fills the device.
    """
    from .aggregation import triton_aggregate as _impl

    return _impl(h, mode, chunk_size=chunk_size)

"""The element-wise work of a chunk of the fused/lean passes, eager or compiled.

The chunked passes (:mod:`polymixer.ops.pom.chunked`) run the element-wise work of a chunk
through :class:`ChunkOps`, whose five methods each do in one function what would
otherwise be several passes over F-wide tensors (e.g. features then their column sum),
built from the one definition of the maths in :mod:`.maths` and :mod:`.derivatives`. In eager
PyTorch every operation is its own pass; on a GPU, where these passes (not the GEMMs)
dominate the mixer's time, they are compiled with ``torch.compile`` into a few fused
kernels (on a CPU too for long inputs, where fused loops beat one pass per operation).
Whether they are compiled is the :class:`~polymixer.ops.plan.ExecutionPlan`'s decision.

If compiling a function fails (no compiler, an inductor bug), a warning is given once, the
call goes on eagerly, and the failure is written into a :class:`CompileRecord` for that
configuration (variant, degree, heads, device type, dtype) only. The record is an explicit
input of the plan: a mixer passes ``mixer.compile_record.failed(config)`` to
:func:`~polymixer.ops.plan.choose_path`, whose plan then lists those functions as eager
(``ExecutionPlan.eager_functions``). Every mixer shares :data:`SHARED_COMPILE_RECORD` unless
given its own (``mixer.compile_record = CompileRecord()``), so a broken compiler is tried
once per configuration, not once per block. :func:`compile_failures` and
:func:`clear_compile_cache` read and clear the shared record.
"""

from __future__ import annotations

import warnings

import torch

from .derivatives import feature_backward, gate_backward, gate_input_grad
from .maths import apply_gate, features, gate
from .spec import MixerSpec

__all__ = ["ChunkOps", "CompileRecord", "SHARED_COMPILE_RECORD", "compile_failures", "clear_compile_cache"]


def _chunk_features(spec: MixerSpec, u, coeff, w):
    """Features of a chunk ``u: (..., t, W)``, times the padding weights ``w: (..., t)`` if any.

    The chunk functions take ``(t, .)`` rows or ``(nb, t / nb, .)`` views of whole batch
    rows, with states ``(t or 1, F)`` or ``(nb, 1, F)`` broadcast over the tokens."""
    h = features(spec, u, coeff)
    return h if w is None else h * w.unsqueeze(-1).to(h.dtype)


def _chunk_feature_sum(spec: MixerSpec, u, coeff, w, acc: torch.dtype):
    """Sum over tokens (dim -2) of a chunk's (weighted) features, in ``acc``."""
    return _chunk_features(spec, u, coeff, w).sum(dim=-2, dtype=acc)


def _chunk_gated(spec: MixerSpec, z, H):
    """``s(z) * H``: gate of a chunk ``z: (t, G)`` times its states ``H: (t or 1, F)``."""
    return apply_gate(gate(spec.variant, z), H.to(z.dtype))


def _token_sum(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Sum of ``t: (..., C)`` over every leading dimension, in ``acc``: (C,)."""
    return t.reshape(-1, t.shape[-1]).sum(dim=0, dtype=acc)


def _chunk_gate_backward(spec: MixerSpec, z, H, d_gated, sum_rows: bool, acc: torch.dtype, bias_sum: bool):
    """Backward of the gate side of a chunk, given ``d_gated = dy @ W_o``.

    Returns ``(gated, d_state, d_z, d_b)``: the recomputed ``s * H`` (for W_o's gradient),
    the gradient of the states ``s * d_gated`` (summed over tokens, dim -2, when
    ``sum_rows``; in acc), the gradient of the gate projection's output, and, when
    ``bias_sum``, its sum over the chunk's tokens in acc (the chunk's part of the gate
    bias gradient; else None), so that the reduction is part of this one call.
    """
    s = gate(spec.variant, z)
    Hc = H.to(s.dtype)
    gated = apply_gate(s, Hc)
    d_state = apply_gate(s, d_gated)
    d_state = d_state.sum(dim=-2, dtype=acc) if sum_rows else d_state.to(acc)
    d_z = gate_backward(spec.variant, gate_input_grad(d_gated, Hc, s.shape[-1]), z, s)
    return gated, d_state, d_z, (_token_sum(d_z, acc) if bias_sum else None)


def _chunk_feature_backward(spec: MixerSpec, u, coeff, dh, w, bias_acc: torch.dtype | None):
    """:func:`~polymixer.ops.pom.derivatives.feature_backward` of a chunk, with the padding weights
    ``w`` applied to dh. Returns ``(du_parts, d_coeff, d_b_parts)``: d_b_parts, when
    ``bias_acc`` is a dtype, the sums over the chunk's tokens of the parts in it (the
    chunk's part of the feature bias gradient), else None."""
    if w is not None:
        dh = dh * w.unsqueeze(-1).to(dh.dtype)
    parts, d_coeff = feature_backward(spec, u, coeff, dh)
    sums = None if bias_acc is None else [_token_sum(part, bias_acc) for part in parts]
    return parts, d_coeff, sums


_EAGER = {fn.__name__[len("_chunk_"):]: fn for fn in (
    _chunk_features, _chunk_feature_sum, _chunk_gated, _chunk_gate_backward, _chunk_feature_backward)}
_COMPILED: dict[str, object] = {}  # made at first use (torch.compile of the eager function)


class CompileRecord:
    """The chunk functions whose compile failed, per configuration
    ``(variant, degree, heads, device type, dtype)``, with the error."""

    def __init__(self):
        self._failed: dict[tuple, dict[str, str]] = {}

    def failed(self, config: tuple) -> tuple[str, ...]:
        """Names of the functions that failed to compile for ``config`` (they run eagerly)."""
        return tuple(self._failed.get(tuple(config), ()))

    def add(self, config: tuple, name: str, error: str) -> None:
        self._failed.setdefault(tuple(config), {})[name] = error

    def errors(self, config: tuple) -> dict[str, str]:
        return dict(self._failed.get(tuple(config), {}))

    def clear(self) -> None:
        self._failed.clear()

    def __repr__(self) -> str:
        return f"CompileRecord({sum(len(v) for v in self._failed.values())} failed compiles)"


#: the record every mixer reads and writes unless it is given its own
SHARED_COMPILE_RECORD = CompileRecord()


def compile_failures(config: tuple) -> list[str]:
    """Names of the chunk functions whose compile failed for ``config = (variant, degree,
    heads, device type, dtype)`` in :data:`SHARED_COMPILE_RECORD`."""
    return list(SHARED_COMPILE_RECORD.failed(config))


def clear_compile_cache() -> None:
    """Forget the compiled chunk functions and every failure in :data:`SHARED_COMPILE_RECORD`."""
    _COMPILED.clear()
    SHARED_COMPILE_RECORD.clear()


class ChunkOps:
    """The per-chunk element-wise functions of one mixer call, compiled or eager.

    spec: the mixer's; compiled: the plan's choice; eager: the functions the plan runs
    eagerly all the same (``ExecutionPlan.eager_functions``: their compile failed before);
    device_type, dtype: the call's (with spec, the configuration of a failure); record:
    the :class:`CompileRecord` a new failure is written to (default the shared one).
    """

    def __init__(self, spec: MixerSpec, compiled: bool, device_type: str, dtype: torch.dtype,
                 eager: tuple[str, ...] = (), record: CompileRecord | None = None):
        self.spec, self.compiled, self.eager = spec, compiled, set(eager)
        self.config = (spec.variant, spec.degree, spec.heads, device_type, dtype)
        self.record = SHARED_COMPILE_RECORD if record is None else record

    def _call(self, name: str, *args):
        if self.compiled and name not in self.eager:
            fn = _COMPILED.get(name)
            if fn is None:  # dynamic: chunk sizes vary
                fn = _COMPILED[name] = torch.compile(_EAGER[name], dynamic=True)
            try:
                return fn(self.spec, *args)
            except Exception as e:
                if "out of memory" in str(e).lower():
                    raise  # the device is full, not the compiler broken
                error = f"{type(e).__name__}: {str(e)[:500]}"
                self.record.add(self.config, name, error)
                self.eager.add(name)  # and for the rest of this call
                variant, degree, heads, device_type, dtype = self.config
                warnings.warn(
                    f"polymixer: compiling the mixer's element-wise function {name!r} failed for variant={variant!r}, "
                    f"degree={degree}, heads={heads}, {device_type}, {dtype}; it runs in eager PyTorch for this "
                    f"configuration from now on (MixerSettings(compile='never') skips compiling): {error}",
                    RuntimeWarning, stacklevel=3)
        return _EAGER[name](self.spec, *args)

    def features(self, u, coeff, w):
        return self._call("features", u, coeff, w)

    def feature_sum(self, u, coeff, w, acc):
        return self._call("feature_sum", u, coeff, w, acc)

    def gated(self, z, H):
        return self._call("gated", z, H)

    def gate_backward(self, z, H, d_gated, sum_rows, acc, bias_sum=False):
        return self._call("gate_backward", z, H, d_gated, sum_rows, acc, bias_sum)

    def feature_backward(self, u, coeff, dh, w, bias_acc=None):
        return self._call("feature_backward", u, coeff, dh, w, bias_acc)

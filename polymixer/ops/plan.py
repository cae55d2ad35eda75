"""How a mixer call runs, decided in one place: :func:`choose_path`.

From the mixer's :class:`MixerSettings` and implementation, and the call's inputs (device,
dtype, autocast, whether it is being compiled, the context mode, a streaming state),
:func:`choose_path` returns an :class:`ExecutionPlan`: which form runs (``"fused"``,
``"lean"`` or ``"autograd"``), whether the aggregation runs token-chunked on segments,
whether the chunks' element-wise work is compiled, which backend aggregates (PyTorch or
Triton), and why. :meth:`polymixer.PolynomialMixer.execution_plan` returns the plan of a
call; its forward runs exactly that plan.

Settings are explicit: the environment variables ``POLYMIXER_COMPILE``,
``POLYMIXER_COMPILE_MIN_ROWS``, ``POLYMIXER_COMPILE_AFTER_CALLS`` and ``POLYMIXER_TRITON``
are only the defaults, read when the settings are made (:meth:`MixerSettings.from_env`,
once per mixer), never during a call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import os
from dataclasses import dataclass
from typing import Mapping

import torch

if TYPE_CHECKING:
    from .pom.spec import MixerSpec


__all__ = [
    "CPU_COMPILE_MIN_ROWS", "CPU_COMPILE_AFTER_CALLS", "MixerSettings", "ExecutionPlan", "choose_path", "compile_decision",
    "aggregation_backend", "default_chunk_rows", "autocast_dtype", "compiling",
]

#: ``compile="auto"`` compiles on CPU from this many token rows per call (B * N).
CPU_COMPILE_MIN_ROWS = 8192
#: ``compile="auto"`` on CPU runs a mixer's first this many calls without gradients eagerly.
CPU_COMPILE_AFTER_CALLS = 50
COMPILE_CHOICES = ("auto", "always", "never")
TRITON_CHOICES = ("auto", "on", "off")
FORMS = ("fused", "lean", "autograd")


@dataclass(frozen=True)
class MixerSettings:
    """How a mixer may run; the outputs do not depend on them.

    compile: the fused/lean passes' per-chunk element-wise work through ``torch.compile``:
        ``"auto"`` on CUDA, and on CPU for calls of at least ``compile_min_rows`` token
        rows (a one-time compile of 10-20 s is soon paid back there); ``"always"``;
        ``"never"``.
    compile_min_rows: the CPU threshold of ``"auto"`` (rows = batch x tokens).
    compile_after_calls: ``"auto"`` on CPU, calls without gradients (sampling,
        evaluation): a mixer's first ``compile_after_calls`` such calls run eagerly, the
        later ones compiled. The compile costs 10-20 s and saves about 0.25 s per step of
        the demo's model, so a sample of 20 or 30 steps is faster without it and a long
        evaluation with it. Calls with gradients (training) do not wait.
    triton: the Triton aggregation kernels in the plain autograd form: ``"auto"`` on CUDA
        when Triton is installed; ``"on"`` wherever they can run (CUDA, or CPU under
        ``TRITON_INTERPRET=1``, slowly); ``"off"``.
    chunk_rows: token rows per chunk of the fused/lean passes; None picks one from the
        device, the state width and, on CPU, the call's ``torch.get_num_threads()``
        (:func:`default_chunk_rows`).
    """

    compile: str = "auto"
    compile_min_rows: int = CPU_COMPILE_MIN_ROWS
    compile_after_calls: int = CPU_COMPILE_AFTER_CALLS
    triton: str = "auto"
    chunk_rows: int | None = None

    def __post_init__(self):
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile: expected one of {COMPILE_CHOICES}, got {self.compile!r}")
        if self.triton not in TRITON_CHOICES:
            raise ValueError(f"triton: expected one of {TRITON_CHOICES}, got {self.triton!r}")
        for name in ("compile_min_rows", "compile_after_calls", "chunk_rows"):
            value = getattr(self, name)
            if value is None and name == "chunk_rows":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "chunk_rows" else 0):
                raise ValueError(f"{name}: expected a {'positive' if name == 'chunk_rows' else 'non-negative'} int, "
                                 f"got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "MixerSettings":
        """Settings with the defaults from ``POLYMIXER_COMPILE`` (auto|always|never),
        ``POLYMIXER_COMPILE_MIN_ROWS`` and ``POLYMIXER_COMPILE_AFTER_CALLS`` (ints) and
        ``POLYMIXER_TRITON`` (auto|on|off);
        ``overrides`` (keyword arguments of the fields) win over them."""
        env = os.environ if environ is None else environ
        values = {}
        compile_ = env.get("POLYMIXER_COMPILE")
        if compile_ is not None:
            if compile_.lower() not in COMPILE_CHOICES:
                raise ValueError(f"POLYMIXER_COMPILE: expected auto, always or never, got {compile_!r}")
            values["compile"] = compile_.lower()
        for name in ("compile_min_rows", "compile_after_calls"):
            value = env.get(f"POLYMIXER_{name.upper()}")
            if value is not None:
                try:
                    values[name] = int(value)
                except ValueError:
                    raise ValueError(f"POLYMIXER_{name.upper()}: expected an integer, got {value!r}") from None
        triton = env.get("POLYMIXER_TRITON")
        if triton is not None:
            if triton.lower() not in TRITON_CHOICES:
                raise ValueError(f"POLYMIXER_TRITON: expected auto, on or off, got {triton!r}")
            values["triton"] = triton.lower()
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class ExecutionPlan:
    """How one mixer call runs (see the module docstring).

    form: ``"fused"`` or ``"lean"`` (:class:`polymixer.ops.pom.fused.FusedPolynomialMix`:
        hand-written backward keeping two F-wide tensors, or none), or ``"autograd"``
        (plain PyTorch autograd of features, aggregation and gate).
    chunked: fused/lean only: the mode has a segment form, so the features are summed
        per segment chunk by chunk (no F-wide tensor but the chunks, and the per-token
        states of the causal mode); False: the features and the mode's aggregation run on
        whole tensors (packed, dense). The gate side is chunked in both.
    compiled: fused/lean only: each chunk's element-wise work runs through
        ``torch.compile`` (a function whose compile failed for this configuration runs
        eagerly; ``reason`` names it).
    aggregation_backend: ``"torch"`` or ``"triton"``: who computes the aggregation.
    dtype: the compute dtype of the fused/lean passes under autocast (None: the inputs').
    chunk_rows: fused/lean only: token rows per chunk.
    eager_functions: fused/lean, compiled: the chunk functions that run eagerly all the
        same, because their compile failed before (the ``compile_failures`` given to
        :func:`choose_path`).
    keep_projections: fused only: the two projections' outputs are kept for the backward
        pass (two F-wide tensors); lean recomputes them.
    keep_states: fused/lean, segment modes: the segment states are kept for the backward
        pass (fewer than N/4 segments); with about one per token (causal) they are F-wide
        and recomputed.
    reason: why, in words.
    """

    form: str
    chunked: bool = False
    compiled: bool = False
    aggregation_backend: str = "torch"
    dtype: torch.dtype | None = None
    chunk_rows: int | None = None
    eager_functions: tuple[str, ...] = ()
    keep_projections: bool = False
    keep_states: bool = False
    reason: str = ""


def compiling() -> bool:
    """True while torch.compile traces the caller."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype for ``device_type`` when autocast is on there, else None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # pragma: no cover - torch < 2.4
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def default_chunk_rows(width: int, device_type: str, threads: int | None = None) -> int:
    """Token rows per chunk of a state width ``width`` (F).

    CPU: about 4 MB of F-wide float32 per thread (``threads``, default
    ``torch.get_num_threads()``): one thread's chunk stays in cache (larger chunks are
    measurably slower there), and with several threads every chunk runs about twenty
    multithreaded operations (GEMMs, compiled element-wise kernels, sums), each a parallel
    region ending in a barrier, so a chunk must hold enough work per thread to amortise
    them. Measured at two threads, D = 384, N = 16,384 on a quiet 2-core machine
    (forward+backward over the GEMM floor, ``benchmarks/results/mixer_cpu_threads.md``):
    4 MB per thread 1.19 (product) / 1.18 (power), 16 MB per thread 1.26 / 1.18, one 4 MB
    chunk for both threads 1.17 / 1.23; with the second core busy, larger chunks lose less
    (the old single 4 MB chunk was 1.6-2.1x there). A GPU: 256 MB (few large kernels;
    launches, not caches, are the cost)."""
    if device_type == "cuda":
        return max(4096, min(1 << 16, (256 << 20) // (4 * max(width, 1))))
    threads = torch.get_num_threads() if threads is None else max(int(threads), 1)
    return max(256 * threads, min(8192 * threads, threads * (4 << 20) // (4 * max(width, 1))))


def compile_decision(settings: MixerSettings, device_type: str, rows: int,
                     inference_calls: int | None = None) -> tuple[bool, str]:
    """Whether the chunks' element-wise work is compiled for a call of ``rows`` token rows;
    inference_calls: for a call without gradients, how many such calls the mixer has run
    before (None: a call with gradients)."""
    if settings.compile != "auto":
        return settings.compile == "always", f"compile={settings.compile!r}"
    if device_type == "cuda":
        return True, "compile='auto': compiled on CUDA"
    if rows < settings.compile_min_rows:
        return False, (f"compile='auto': eager on {device_type} for {rows} token rows "
                       f"(compiled from {settings.compile_min_rows})")
    if inference_calls is not None and inference_calls < settings.compile_after_calls:
        return False, (f"compile='auto': eager on {device_type} for the call {inference_calls + 1} without "
                       f"gradients (compiled from the call {settings.compile_after_calls + 1}: a short sample "
                       f"does not pay a compile back)")
    return True, (f"compile='auto': compiled on {device_type} for {rows} token rows "
                  f"(compiled from {settings.compile_min_rows})")


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def aggregation_backend(setting: str, t: torch.Tensor, mode, streaming: bool = False,
                        dtype: torch.dtype | None = None) -> tuple[str, str]:
    """``("torch" | "triton", reason)``: who aggregates features of ``dtype`` (default
    ``t.dtype``) on ``t``'s device in ``mode``. setting: :attr:`MixerSettings.triton`."""
    if setting == "off":
        return "torch", "triton='off'"
    if not mode.streamable:
        return "torch", f"the Triton kernels implement the segment modes, not {mode.kind}"
    if streaming:
        return "torch", "the Triton kernels take no streaming state"
    if compiling():
        return "torch", "inside torch.compile"
    dtype = t.dtype if dtype is None else dtype
    if setting == "auto" and not t.is_cuda:
        return "torch", "triton='auto': Triton on CUDA only"
    if setting == "auto" and dtype not in _TRITON_DTYPES:
        return "torch", f"triton='auto': not for {dtype}"
    from .triton import triton_available  # cheap: imports Triton only to check it

    if not triton_available(t):
        return "torch", f"the Triton kernels cannot run on {t.device.type} here"
    return "triton", f"triton={setting!r}: Triton kernels"


def _compiling_plan(implementation: str) -> ExecutionPlan:
    note = "" if implementation == "autograd" else f" (implementation={implementation!r} is not traced)"
    return ExecutionPlan("autograd", reason=f"inside torch.compile: the plain autograd form, which the compiler "
                                            f"fuses{note}; PyTorch aggregation")


_COMPILING_PLANS = {impl: _compiling_plan(impl) for impl in FORMS}


def choose_path(settings: MixerSettings, implementation: str, spec: MixerSpec, width: int, x: torch.Tensor,
                context: torch.Tensor, mode, streaming: bool = False, autograd_only: tuple[str, ...] = (),
                torch_aggregation_only: tuple[str, ...] = (),
                compile_failures: tuple[str, ...] = (), inference_calls: int | None = None) -> ExecutionPlan:
    """The :class:`ExecutionPlan` of a mixer call.

    settings, implementation (``"fused"``, ``"lean"``, ``"autograd"``), spec and width
    (the state width F): the mixer's; x: (B, M, D) queries, context: (B, N, D) (x itself when self-mixing); mode:
    the call's :class:`~polymixer.ops.context.ContextMode`; streaming: a state of earlier
    tokens is read; autograd_only: the mixer's options that only the plain autograd form
    (and PyTorch's aggregation) computes, in words (e.g. ``"rotary positions"``,
    ``"frame_memory='decay'"``: a new such option is a new entry here, not a new argument);
    torch_aggregation_only: those options that PyTorch's aggregation alone computes (not the
    Triton kernels: e.g. a frame memory other than the mean);
    compile_failures: the chunk functions whose compile failed before for this configuration
    (``mixer.compile_record``, see :mod:`polymixer.ops.pom.chunk_ops`), run eagerly;
    inference_calls: for a call without gradients, the mixer's such calls before it (None
    for a call with gradients; see ``MixerSettings.compile_after_calls``). The plan
    is a function of these arguments alone. The implementation is a request: the plain
    autograd form runs with a streaming state, with any ``autograd_only`` option, inside
    torch.compile (which cannot trace the hand-written backward, and fuses the autograd form
    itself), and for ``"fused"`` in modes with one segment per token (causal) on CUDA, where
    autograd with the Triton scan is faster and keeps less than the fused form's per-token
    float32 states (H200, bench_gpu.py).
    """
    if torch_aggregation_only:
        options = ", ".join(torch_aggregation_only)
        if compiling():
            return ExecutionPlan("autograd", reason=f"inside torch.compile: the plain autograd form; {options}: "
                                                    f"PyTorch aggregation")
        return ExecutionPlan("autograd", reason=f"implementation={implementation!r}, but {options}: the plain "
                                                f"autograd form and PyTorch aggregation (the fused, lean and "
                                                f"Triton forms do not have it)")
    if compiling():
        return _COMPILING_PLANS[implementation]
    device_type = x.device.type
    amp = autocast_dtype(device_type)
    dtype = amp or x.dtype
    num_context = context.shape[1]
    seg = mode.segments(num_context)
    why = None
    if implementation == "autograd":
        why = "implementation='autograd'"
    elif streaming:
        why = f"implementation={implementation!r}, but a streaming state runs the plain autograd form"
    elif autograd_only:
        why = (f"implementation={implementation!r}, but {', '.join(autograd_only)}: the plain autograd form "
               "(the fused and lean forms do not have it)")
    elif implementation == "fused" and device_type == "cuda" and seg is not None and seg.per_token:
        why = ("implementation='fused', but in the causal mode on CUDA the autograd form (Triton scan) is "
               "faster and keeps less")
    if why is not None:
        backend, why_backend = aggregation_backend(settings.triton, x, mode, streaming, dtype)
        return ExecutionPlan("autograd", aggregation_backend=backend, reason=f"{why}; aggregation: {why_backend}")
    rows = x.shape[0] * max(num_context, x.shape[1])
    compiled, why_compile = compile_decision(settings, device_type, rows, inference_calls)
    eager = tuple(compile_failures) if compiled else ()
    if eager:
        why_compile += f"; eager for {', '.join(eager)} after a failed compile"
    if settings.chunk_rows is not None:
        chunk, why_chunk = settings.chunk_rows, f"chunks of {settings.chunk_rows} rows (chunk_rows)"
    elif device_type == "cuda":
        chunk = default_chunk_rows(width, device_type)
        why_chunk = f"chunks of {chunk} rows"
    else:
        threads = torch.get_num_threads()
        chunk = default_chunk_rows(width, device_type, threads)
        why_chunk = f"chunks of {chunk} rows ({threads} thread{'s' if threads > 1 else ''})"
    shape = (f"{mode.kind} mode: features summed per segment, chunk by chunk" if seg is not None
             else f"{mode.kind} mode: features and aggregation on whole tensors")
    keep_projections = implementation == "fused"
    keep_states = seg is not None and 4 * seg.count <= num_context
    kept = [name for name, kept in (("the projections", keep_projections), ("the segment states", keep_states))
            if kept]
    why_keep = f"kept for the backward pass: {' and '.join(kept) if kept else 'no F-wide tensor'}"
    return ExecutionPlan(implementation, chunked=seg is not None, compiled=compiled, aggregation_backend="torch",
                         dtype=amp, chunk_rows=chunk, eager_functions=eager, keep_projections=keep_projections,
                         keep_states=keep_states,
                         reason=f"implementation={implementation!r}; {shape}; {why_compile}; "
                                f"{why_chunk}; {why_keep}; PyTorch aggregation")

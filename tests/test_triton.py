"""Triton kernels of the aggregation against the dense reference: outputs and gradients.

Without CUDA the kernels run on CPU tensors under Triton's interpreter, which needs
``TRITON_INTERPRET=1`` before ``triton`` is imported: Triton decorates its own helpers
(``tl.sum``, ``tl.cumsum``) at import, compiled or interpreted according to the flag.
(polymixer builds its own kernels lazily, at the first launch, for the flag's value at
that moment.) This module sets the flag at import, i.e. at collection, before any test
runs. If another module imported Triton earlier without the flag (torch.compile does
when it runs, but only at run time, after collection), the in-process CPU cases skip
and ``test_in_a_fresh_process`` runs this file again in a new interpreter with the flag
set, so the kernels are still tested.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

_TRITON_WAS_IMPORTED = "triton" in sys.modules
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from polymixer.ops.context import aggregate, resolve_context  # noqa: E402
from polymixer.ops.plan import aggregation_backend  # noqa: E402
from polymixer.ops.reference import reference_aggregate  # noqa: E402
from polymixer import PolynomialMixer  # noqa: E402
from polymixer.ops import MixerSettings  # noqa: E402
from polymixer.ops.triton import triton_aggregate, triton_available  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
B, F = 2, 60
# Interpreting was asked for, but Triton was imported before the flag was set.
_STALE_IMPORT = (
    _TRITON_WAS_IMPORTED
    and os.environ.get("TRITON_INTERPRET") == "1"
    and not triton_available(torch.empty(0))
)


@pytest.fixture(params=DEVICES)
def device(request):
    dev = torch.device(request.param)
    if not triton_available(torch.empty(0, device=dev)):
        pytest.skip(f"Triton kernels cannot run on {dev} (CPU: needs TRITON_INTERPRET=1 set before triton is imported; then test_in_a_fresh_process covers them)")
    return dev


def _mask(n, device):
    """Random padding mask with ~30 % padding; batch row 0 entirely padded."""
    m = torch.rand(B, n, device=device) > 0.3
    m[0] = False
    return m


MODES = [
    ("full", {}),
    ("causal", {"causal": True}),
    ("block1", {"block_size": 1}),
    ("block7", {"block_size": 7}),
    ("block_long", {"block_size": 1000}),  # one block longer than N: same as full, per token
    ("lengths", {"block_lengths": None}),  # uneven explicit lengths, filled in per N
]


def _kwargs(name, kw, n):
    if name == "lengths":
        lengths, left = [], n
        for size in (3, 1, 17, 5):
            if left == 0:
                break
            lengths.append(min(size, left))
            left -= lengths[-1]
        if left:
            lengths.append(left)
        return {"block_lengths": lengths}
    return dict(kw)


def _check(h, mode, chunk_size=None, atol=1e-5, rtol=1e-5, grad_atol=None, grad_rtol=None):
    """Triton output and input gradient (random upstream gradient) against the dense oracle."""
    n = h.shape[1]
    a = h.detach().clone().requires_grad_()
    r = h.detach().clone().requires_grad_()
    out = triton_aggregate(a, mode, chunk_size=chunk_size)
    ref = reference_aggregate(r, mode, n)
    if mode.kind == "full":
        ref = ref[:, :1]  # every query reads the same state
    assert out.dtype == (torch.float64 if h.dtype == torch.float64 else torch.float32)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(out, aggregate(h, mode), atol=atol, rtol=rtol)  # the PyTorch form
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert a.grad.dtype == h.dtype and a.grad.shape == h.shape
    torch.testing.assert_close(a.grad, r.grad, atol=grad_atol or atol, rtol=grad_rtol or rtol)


@pytest.mark.parametrize("n", [1, 63, 130])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name,kw", MODES, ids=[m[0] for m in MODES])
def test_fp32_matches_reference(device, name, kw, masked, n):
    h = torch.randn(B, n, F, device=device)
    mode = resolve_context(B, n, n, context_mask=_mask(n, device) if masked else None,
                           device=device, **_kwargs(name, kw, n))
    _check(h, mode)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name,kw", MODES, ids=[m[0] for m in MODES])
def test_many_chunks(device, name, kw, masked):
    """N split over several programs per row: the carries between chunks."""
    n = 130
    h = torch.randn(B, n, F, device=device)
    mode = resolve_context(B, n, n, context_mask=_mask(n, device) if masked else None,
                           device=device, **_kwargs(name, kw, n))
    _check(h, mode, chunk_size=16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,kw", [MODES[0], MODES[1], MODES[3]], ids=["full", "causal", "block7"])
def test_low_precision_input_fp32_state(device, name, kw, dtype):
    n = 63
    h = (torch.randn(B, n, F, device=device) * 4).to(dtype)
    mode = resolve_context(B, n, n, context_mask=_mask(n, device), device=device, **kw)
    # Same (rounded) inputs, both sides sum in float32: only the order of the sums differs.
    # The gradient is rounded to the input dtype.
    _check(h, mode, atol=1e-5, rtol=1e-5, grad_atol=1e-2, grad_rtol=1e-2)


def test_float64_and_strided_input(device):
    n = 63
    base = torch.randn(B, F, 2 * n, dtype=torch.float64, device=device)
    h = base[:, :, ::2].transpose(1, 2)  # (B, n, F), no unit stride anywhere
    assert not h.is_contiguous()
    for kw in ({}, {"causal": True}, {"block_size": 7}):
        mode = resolve_context(B, n, n, context_mask=_mask(n, device), device=device, **kw)
        _check(h, mode, atol=1e-12, rtol=1e-12)


def test_rejects_other_modes(device):
    h = torch.randn(B, 8, F, device=device)
    mode = resolve_context(B, 8, 8, cu_seqlens=torch.tensor([0, 3, 8]), device=device)
    with pytest.raises(ValueError, match="packed"):
        triton_aggregate(h, mode)
    with pytest.raises(TypeError, match="dtype"):
        triton_aggregate(h.int(), resolve_context(B, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_aggregate_dispatches_on_cuda():
    h = torch.randn(B, 130, F, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mode = resolve_context(B, 130, 130, causal=True, device="cuda")
    backend, _ = aggregation_backend("auto", h, mode)
    assert backend == "triton"
    out = aggregate(h, mode, backend=backend)
    assert out.dtype == torch.float32
    assert "TritonAggregate" in type(out.grad_fn).__name__, type(out.grad_fn).__name__
    torch.testing.assert_close(out, reference_aggregate(h.detach(), mode, 130), atol=1e-5, rtol=1e-5)


def test_aggregate_does_not_dispatch_on_cpu():
    """Even with the interpreter on, the plan keeps the PyTorch forms for CPU tensors, and
    aggregate() runs the backend it is given (PyTorch by default)."""
    h = torch.randn(B, 9, F, requires_grad=True)
    for kw in ({}, {"causal": True}, {"block_size": 4}):
        mode = resolve_context(B, 9, 9, **kw)
        assert aggregation_backend("auto", h, mode)[0] == "torch"
        out = aggregate(h, mode)
        assert "TritonAggregate" not in type(out.grad_fn).__name__, type(out.grad_fn).__name__
    mixer = PolynomialMixer(16, implementation="autograd")
    assert mixer.execution_plan(torch.randn(2, 9, 16), causal=True).aggregation_backend == "torch"


@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 4)])
def test_mixer_with_triton_on_and_off(device, variant, heads):
    """The settings choose the backend, no patching: triton="on" runs the mixer's autograd
    form through the kernels (interpreted on CPU), "off" through PyTorch; same function."""
    n = 37
    x = torch.randn(B, n, 32, device=device, dtype=torch.float64, requires_grad=True)
    pad = _mask(n, device)
    for kw in ({}, {"context_mask": pad}, {"causal": True}, {"block_size": 5, "context_mask": pad}):
        outs = {}
        for setting in ("on", "off"):
            mixer = PolynomialMixer(32, variant=variant, heads=heads, implementation="autograd",
                                    settings=MixerSettings(triton=setting)).to(device, torch.float64)
            torch.manual_seed(0)
            for p in mixer.parameters():
                torch.nn.init.normal_(p, std=0.2)
            plan = mixer.execution_plan(x, **kw)
            assert plan.aggregation_backend == ("triton" if setting == "on" else "torch"), plan
            y = mixer(x, **kw)
            outs[setting] = (y, torch.autograd.grad(y.square().sum(), [x] + list(mixer.parameters())))
        torch.testing.assert_close(outs["on"][0], outs["off"][0], rtol=1e-10, atol=1e-10)
        for a, b in zip(outs["on"][1], outs["off"][1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # modes without a segment form, and streaming, stay on PyTorch whatever the setting
    mixer = PolynomialMixer(32, implementation="autograd", settings=MixerSettings(triton="on")).to(device)
    xf = x.detach().float()
    assert mixer.execution_plan(xf, cu_seqlens=torch.tensor([0, 5, n])).aggregation_backend == "torch"
    assert mixer.execution_plan(xf, state=mixer.init_state(B)).aggregation_backend == "torch"


def test_package_works_without_triton():
    """With Triton unimportable, polymixer imports and aggregates on CPU; no kernel import."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch; torch.set_num_threads(1)\n"
        "import polymixer\n"
        "from polymixer.ops.context import aggregate, resolve_context\n"
        "from polymixer.ops.triton import triton_available\n"
        "h = torch.randn(2, 5, 3)\n"
        "assert not triton_available(h)\n"
        "out = aggregate(h, resolve_context(2, 5, 5, causal=True))\n"
        "assert out.shape == (2, 5, 3)\n"
        "assert 'polymixer.ops.triton.aggregation' not in sys.modules\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.mark.skipif(not _STALE_IMPORT, reason="Triton was imported with the right flag: tested in process")
def test_in_a_fresh_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not fresh_process"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 40, result.stdout[-2000:]  # not all skipped


_AOT_SCRIPT = r"""
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from polymixer.ops.triton import aggregation as A

k = A._kernels()
assert type(k.scan).__name__ == "JITFunction", type(k.scan)

def compile_(fn, ptrs, consts):
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in fn.arg_names}
    c = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": A._NUM_WARPS})
    assert c.asm.get("cubin"), "no cubin"

tiles = {"BLOCK_N": A._BLOCK_N, "BLOCK_F": A._MAX_BLOCK_F}
compile_(k.chunk_sums, {"x_ptr": "*bf16", "pre_ptr": "*fp32", "out_ptr": "*fp32"}, {"HAS_PRE": True, **tiles})
for rev, blocks in itertools.product((False, True), repeat=2):  # forward and backward forms
    ptrs = {"x_ptr": "*fp32" if rev else "*bf16", "pre_ptr": "*fp32", "post_ptr": "*fp32", "carry_ptr": "*fp32",
            "out_ptr": "*bf16" if rev and not blocks else "*fp32", "ids_ptr": "*i64", "edge_ptr": "*i8"}
    compile_(k.scan, ptrs, {"HAS_PRE": True, "HAS_POST": True, "HAS_CARRY": True, "REVERSE": rev,
                            "TO_BLOCKS": blocks, **tiles})
compile_(k.gather, {"src_ptr": "*fp32", "ids_ptr": "*i64", "post_ptr": "*fp32", "out_ptr": "*bf16"},
         {"HAS_IDS": True, "HAS_POST": True, **tiles})
print("compiled")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA cases compile and run the kernels")
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The interpreter does not type-check like the compiler: compile the kernels ahead of
    time for an H100 (sm_90, Triton's bundled ptxas) in a process without the interpreter."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:  # pragma: no cover - other Triton versions
        pytest.skip(f"no ahead-of-time compile API in this Triton: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]

"""PolynomialMixer: every mode against the reference, invariances, numerics, compile."""

import pytest
import torch

from polymixer import PolynomialMixer
from polymixer.ops import MixerSettings, product_features, power_features, power_activation
from polymixer.ops.pom.chunk_ops import clear_compile_cache, compile_failures
from polymixer.ops.plan import CPU_COMPILE_AFTER_CALLS, CPU_COMPILE_MIN_ROWS, compile_decision

VARIANTS = [("product", 1), ("power", 1), ("power", 4), ("product", 3)]


def _mode_kwargs(n, batch, gen):
    pad = torch.rand(batch, n, generator=gen) > 0.25
    cut = n // 3
    return [
        {},
        {"context_mask": pad},
        {"causal": True},
        {"block_size": 5},
        {"block_lengths": [n - cut, cut] if cut else [n]},
        {"cu_seqlens": torch.tensor([0, cut, n])},
        {"cu_seqlens": torch.tensor([0, cut, n]), "causal": True},
        {"mask": torch.rand(batch, n, n, generator=gen) > 0.5},
    ]


def _grads(out, tensors, upstream):
    return torch.autograd.grad(out, tensors, upstream, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("implementation", ["fused", "lean", "autograd"])
@pytest.mark.parametrize("variant,heads", VARIANTS)
@pytest.mark.parametrize("n,dtype", [(1, torch.float64), (63, torch.float64), (257, torch.float64),
                                     (1, torch.float32), (63, torch.float32)])
def test_forward_and_gradients_match_reference(implementation, variant, heads, n, dtype):
    gen = torch.Generator().manual_seed(n + heads)
    batch, dim = 2, 60
    mixer = PolynomialMixer(dim, degree=3 if variant == "power" else 2, expand=2, variant=variant, heads=heads,
                            implementation=implementation).to(dtype)
    params = list(mixer.parameters())
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    for kwargs in _mode_kwargs(n, batch, gen):
        x = torch.randn(batch, n, dim, dtype=dtype, generator=gen, requires_grad=True)
        fast = mixer(x, **kwargs)
        ref = mixer.forward_reference(x, **kwargs)
        torch.testing.assert_close(fast, ref, **tol, msg=str(kwargs.keys()))
        upstream = torch.randn(fast.shape, dtype=dtype, generator=gen)
        for g_fast, g_ref in zip(_grads(fast, [x] + params, upstream), _grads(ref, [x] + params, upstream)):
            torch.testing.assert_close(g_fast, g_ref, **tol, msg=str(kwargs.keys()))


@pytest.mark.parametrize("implementation", ["fused", "lean", "autograd"])
@pytest.mark.parametrize("variant", ["product", "power"])
def test_cross_mixing_with_padding_matches_reference(variant, implementation):
    gen = torch.Generator().manual_seed(1)
    mixer = PolynomialMixer(60, variant=variant, implementation=implementation).double()
    x = torch.randn(3, 17, 60, dtype=torch.float64, generator=gen, requires_grad=True)
    c = torch.randn(3, 40, 60, dtype=torch.float64, generator=gen, requires_grad=True)
    pad = torch.rand(3, 40, generator=gen) > 0.5
    dense = torch.rand(3, 17, 40, generator=gen) > 0.5
    for kwargs in ({}, {"context_mask": pad}, {"mask": dense}):
        fast = mixer(x, c, **kwargs)
        ref = mixer.forward_reference(x, c, **kwargs)
        torch.testing.assert_close(fast, ref)
        up = torch.randn(fast.shape, dtype=torch.float64, generator=gen)
        for a, b in zip(torch.autograd.grad(fast, [x, c], up), torch.autograd.grad(ref, [x, c], up)):
            torch.testing.assert_close(a, b)


def test_features_match_the_spec_formulas():
    u = torch.randn(4, 12, dtype=torch.float64)
    g = torch.nn.functional.gelu(u)
    g1, g2, g3 = g[:, :4], g[:, 4:8], g[:, 8:]
    torch.testing.assert_close(product_features(u, 3), torch.cat([g1, g1 * g2, g1 * g2 * g3], -1))
    a = torch.randn(12, 4, dtype=torch.float64)
    v = power_activation(u)
    expected = sum(a[:, i] * v ** (i + 1) for i in range(4))
    torch.testing.assert_close(power_features(v, a), expected)
    z = torch.tensor([-20.0, -1.0, 0.5, 10.0])
    torch.testing.assert_close(power_activation(z), torch.tensor([-0.1, -0.01, 0.5, 6.0]))


@pytest.mark.parametrize("variant", ["product", "power"])
def test_full_self_mixing_is_permutation_equivariant(variant):
    mixer = PolynomialMixer(60, variant=variant).double()
    x = torch.randn(2, 63, 60, dtype=torch.float64)
    perm = torch.randperm(63)
    torch.testing.assert_close(mixer(x)[:, perm], mixer(x[:, perm]))


@pytest.mark.parametrize("variant", ["product", "power"])
def test_duplicating_the_sequence_leaves_full_outputs_unchanged(variant):
    mixer = PolynomialMixer(60, variant=variant).double()
    x = torch.randn(2, 63, 60, dtype=torch.float64)
    y = mixer(x)
    y2 = mixer(torch.cat([x, x], dim=1))
    torch.testing.assert_close(y2[:, :63], y)
    torch.testing.assert_close(y2[:, 63:], y)


@pytest.mark.parametrize("causal", [False, True])
def test_padded_batch_equals_packed_form(causal):
    mixer = PolynomialMixer(60).double()
    lengths = [5, 63, 1, 30]
    seqs = [torch.randn(n, 60, dtype=torch.float64) for n in lengths]
    longest = max(lengths)
    padded = torch.zeros(len(lengths), longest, 60, dtype=torch.float64)
    pad_mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
        pad_mask[i, : len(s)] = True
    out_padded = mixer(padded, context_mask=pad_mask, causal=causal)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    out_packed = mixer(torch.cat(seqs)[None], cu_seqlens=cu, causal=causal)[0]
    expected = torch.cat([out_padded[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(out_packed, expected)


@pytest.mark.parametrize("variant", ["product", "power"])
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_finite_on_large_inputs(variant, degree, dtype):
    mixer = PolynomialMixer(64, degree=degree, expand=2, variant=variant)
    x = (torch.rand(2, 200, 64) * 20 - 10)  # |x| <= 10
    x[:, 0] = 10.0
    x[:, 1] = -10.0
    for kwargs in ({}, {"causal": True}, {"block_size": 16}):
        half = mixer.to(dtype)(x.to(dtype), **kwargs)
        assert torch.isfinite(half).all(), (dtype, kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = mixer.float()(x, **kwargs)
        assert torch.isfinite(auto).all(), kwargs
        ref = mixer.double()(x.double(), **kwargs)
        scale = ref.abs().max().clamp_min(1)
        assert ((half.double() - ref).abs().max() / scale) < 0.1
        assert ((auto.double() - ref).abs().max() / scale) < 0.1
        mixer.float()


def test_state_stays_float32_under_autocast():
    mixer = PolynomialMixer(32)
    state = mixer.init_state(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mixer.step(torch.randn(2, 7, 32), state)
    assert y.dtype == torch.bfloat16
    assert state.total.dtype == torch.float32 and state.count.dtype == torch.float32


@pytest.mark.parametrize("variant", ["product", "power"])
def test_torch_compile_fullgraph_matches_eager(variant):
    mixer = PolynomialMixer(60, variant=variant, heads=1 if variant == "product" else 4)
    x = torch.randn(2, 300, 60)
    compiled = torch.compile(mixer, fullgraph=True)
    # 300 = 8 * 37 + 4: a short last block (once miscompiled by inductor, see block_ids_from_size)
    for kwargs in ({}, {"causal": True}, {"block_size": 37}):
        torch.testing.assert_close(compiled(x, **kwargs), mixer(x, **kwargs), rtol=1e-4, atol=1e-5)


def _saved_activation_shapes(module, x, **kwargs):
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x, **kwargs)
    y.sum().backward()
    return list(saved.values())


@pytest.mark.parametrize("variant", ["product", "power"])
@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"block_size": 16}, {"context_mask": True}],
                         ids=["full", "causal", "block", "padding"])
def test_saved_activations_per_implementation(variant, kwargs):
    """fused keeps at most two F-wide tensors, lean none; plain autograd keeps more."""
    B, N, D = 2, 128, 32
    x = torch.randn(B, N, D, requires_grad=True)
    if kwargs.get("context_mask"):
        kwargs = {"context_mask": torch.rand(B, N) > 0.5}
    counts = {}
    for impl in ("autograd", "fused", "lean"):
        mixer = PolynomialMixer(D, variant=variant, implementation=impl)
        F_ = mixer.state_width
        sizes = _saved_activation_shapes(mixer, x, **kwargs)
        counts[impl] = sum(1 for n in sizes if n >= B * N * F_)
        assert sum(sizes) <= (counts[impl] * B * N * F_ + 2 * B * N * D + 4 * B * F_ + 4 * N + B * N), (impl, sizes)
    assert counts["fused"] <= 2 and counts["lean"] == 0
    assert counts["autograd"] >= 3


def test_dit_implementations_give_the_same_outputs_and_gradients():
    """pom_implementation is an option of the models too: same function, other memory."""
    from polymixer.models import DiT, DiTConfig

    outs = {}
    for impl in ("autograd", "fused", "lean"):
        torch.manual_seed(0)
        cfg = DiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                        pom_implementation=impl, n_classes=3)
        model = DiT(cfg).double()
        for p in model.parameters():  # adaLN-Zero starts at zero: make every path count
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        out = model(x, torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([0, 3]))
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        outs[impl] = (out, grads)
    for impl in ("fused", "lean"):
        torch.testing.assert_close(outs[impl][0], outs["autograd"][0])
        for a, b in zip(outs[impl][1], outs["autograd"][1]):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pom_implementation"):
        DiTConfig(pom_implementation="fast")


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 4), ("product", 3)])
def test_chunked_modes_across_chunk_and_batch_boundaries(rows, variant, heads):
    """The token-chunked segment modes with chunks inside one batch row and across rows."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(3, 40, 24, dtype=torch.float64, generator=gen, requires_grad=True)
    c = torch.randn(3, 29, 24, dtype=torch.float64, generator=gen, requires_grad=True)
    pad = torch.rand(3, 29, generator=gen) > 0.4
    pad[1] = False
    for impl in ("fused", "lean"):
        mixer = PolynomialMixer(24, degree=3, variant=variant, heads=heads, implementation=impl,
                                settings=MixerSettings(chunk_rows=rows)).double()
        params = list(mixer.parameters())
        self_pad = pad[:, :1].expand(3, 40).contiguous()
        self_pad[2, ::3] = False
        for args, kwargs in (((x,), {}), ((x,), {"context_mask": self_pad}),
                             ((x, c), {}), ((x, c), {"context_mask": pad}),
                             ((x,), {"causal": True}), ((x,), {"causal": True, "context_mask": self_pad}),
                             ((x,), {"block_size": 6}), ((x,), {"block_lengths": [1, 20, 19]}),
                             ((x,), {"block_size": 5, "context_mask": self_pad}),
                             ((x,), {"cu_seqlens": torch.tensor([0, 13, 40])}), ((x, c), {"mask": pad[:, None].expand(3, 40, 29)})):
            assert mixer.execution_plan(*args, **kwargs).chunk_rows == rows
            fast = mixer(*args, **kwargs)
            mixer.implementation = "autograd"
            ref = mixer(*args, **kwargs)
            mixer.implementation = impl
            torch.testing.assert_close(fast, ref)
            up = torch.randn(fast.shape, dtype=torch.float64, generator=gen)
            inputs = list(args) + params
            for a, b in zip(_grads(fast, inputs, up), _grads(ref, inputs, up)):
                torch.testing.assert_close(a, b)


def test_double_backward_raises_on_the_fused_path_and_works_on_autograd():
    x = torch.randn(2, 9, 16, requires_grad=True)
    mixer = PolynomialMixer(16, implementation="fused")
    (g,) = torch.autograd.grad(mixer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
    mixer.implementation = "autograd"
    (g,) = torch.autograd.grad(mixer(x).square().sum(), x, create_graph=True)
    g.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dit_compiles_fullgraph_and_matches_eager():
    """torch.compile(fullgraph=True) of a model built from mixers: no graph break, same outputs."""
    from polymixer.models import DiT, DiTConfig

    torch.manual_seed(0)
    model = DiT(DiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, n_classes=3)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.2, 0.9]), torch.tensor([1, 3])
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), rtol=1e-4, atol=1e-5)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 4)])
def test_autocast_fused_and_lean_match_autograd(device, dtype, variant, heads):
    """Under autocast the fused and lean passes run in the autocast dtype: the outputs of
    plain autograd under autocast (to low-precision rounding), gradients as close to
    float64 as autograd's, float32 gradients for float32 parameters."""
    gen = torch.Generator().manual_seed(3)
    B, N, D = 2, 300, 48
    x = (torch.randn(B, N, D, generator=gen) * 2).to(device)
    pad = (torch.rand(B, N, generator=gen) > 0.3).to(device)
    base = PolynomialMixer(D, degree=3, variant=variant, heads=heads).to(device)
    up = torch.randn(B, N, D, generator=gen).to(device)
    for kwargs in ({}, {"context_mask": pad}, {"causal": True}, {"block_size": 37}, {"mask": pad[:, None].expand(B, N, N)}):
        results = {}
        for impl in ("autograd", "fused", "lean"):
            base.implementation = impl
            xi = x.clone().requires_grad_()
            base.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=dtype):
                y = base(xi, **kwargs)
            assert y.dtype == dtype, (impl, y.dtype)
            y.backward(up)
            grads = [xi.grad] + [p.grad for p in base.parameters()]
            assert all(g.dtype == torch.float32 for g in grads), impl
            results[impl] = (y.detach(), grads)
        ref_mixer = PolynomialMixer(D, degree=3, variant=variant, heads=heads).double().to(device)
        ref_mixer.load_state_dict(base.state_dict())
        xr = x.double().requires_grad_()
        yr = ref_mixer(xr, **kwargs)
        yr.backward(up.double())
        ref_grads = [xr.grad] + [p.grad for p in ref_mixer.parameters()]
        for impl in ("fused", "lean"):
            y, grads = results[impl]
            assert _rel_err(y, results["autograd"][0]) < 0.02, (impl, kwargs.keys())
            assert _rel_err(y, yr) < 0.05, (impl, kwargs.keys())
            for g, g_auto, g_ref in zip(grads, results["autograd"][1], ref_grads):
                assert torch.isfinite(g).all()
                err, err_auto = _rel_err(g, g_ref), _rel_err(g_auto, g_ref)
                # no worse than autograd under autocast (which rounds at other points)
                assert err < 0.1 and err <= 2 * err_auto + 0.02, (impl, kwargs.keys(), err, err_auto)


@pytest.fixture
def compiled_chunks():
    """Fresh compile caches (no compiled chunk function, no remembered failure), before and after."""
    clear_compile_cache()
    yield MixerSettings(compile="always")
    clear_compile_cache()


@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 4)])
def test_compiled_chunk_functions_match_autograd(compiled_chunks, variant, heads):
    """The per-chunk element-wise functions compiled (the default on CUDA), here on CPU:
    same values and gradients as plain autograd, chunks inside and across batch rows."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 40, 24, generator=gen, requires_grad=True)
    pad = torch.rand(3, 40, generator=gen) > 0.3
    settings = MixerSettings(compile="always", chunk_rows=48)
    mixer = PolynomialMixer(24, degree=3, variant=variant, heads=heads, settings=settings)
    params = list(mixer.parameters())
    for kwargs in ({}, {"context_mask": pad}, {"causal": True}, {"block_size": 7}):
        mixer.implementation = "fused"
        assert mixer.execution_plan(x, **kwargs).compiled
        fast = mixer(x, **kwargs)
        mixer.implementation = "autograd"
        ref = mixer(x, **kwargs)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        up = torch.randn(fast.shape, generator=gen)
        for a, b in zip(_grads(fast, [x] + params, up), _grads(ref, [x] + params, up)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not compile_failures((variant, 3, heads, "cpu", torch.float32))


def test_failed_compile_falls_back_to_eager_with_a_warning(compiled_chunks, monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)  # a broken compiler, not a polymixer global
    mixer = PolynomialMixer(16, settings=compiled_chunks)
    x = torch.randn(2, 9, 16)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        y = mixer(x)
    torch.testing.assert_close(y, mixer.forward_reference(x))
    assert compile_failures(("product", 2, 1, "cpu", torch.float32))
    assert "after a failed compile" in mixer.execution_plan(x).reason
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixer(x)  # no second warning: eager for this configuration from now on


def test_failed_compile_of_one_configuration_leaves_the_others(compiled_chunks, monkeypatch):
    """A compile that fails for one configuration (here: power, degree 3, float64) does not
    switch another to eager, nor does it change any process-wide setting."""
    real_compile = torch.compile

    def compile_failing_in_float64(fn, **kwargs):
        compiled = real_compile(fn, **kwargs)

        def run(*args):
            if any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args):
                raise RuntimeError("no float64 here")
            return compiled(*args)
        return run

    monkeypatch.setattr(torch, "compile", compile_failing_in_float64)
    gen = torch.Generator().manual_seed(2)
    broken = PolynomialMixer(24, degree=3, variant="power", settings=compiled_chunks).double()
    xd = torch.randn(2, 20, 24, dtype=torch.float64, generator=gen)
    with pytest.warns(RuntimeWarning, match="no float64 here"):
        torch.testing.assert_close(broken(xd), broken.forward_reference(xd))
    assert compile_failures(("power", 3, 1, "cpu", torch.float64))
    fine = PolynomialMixer(24, degree=3, variant="power", settings=compiled_chunks)
    xf = torch.randn(2, 20, 24, generator=gen)
    plan = fine.execution_plan(xf)
    assert plan.compiled and "failed" not in plan.reason
    torch.testing.assert_close(fine(xf), fine.forward_reference(xf), rtol=1e-4, atol=1e-5)
    assert not compile_failures(("power", 3, 1, "cpu", torch.float32))
    assert PolynomialMixer(24).settings == MixerSettings.from_env()


def test_plan_reads_compile_failures_as_an_input_and_a_mixer_can_keep_its_own_record(compiled_chunks, monkeypatch):
    """choose_path is a function of its arguments: the failures it runs eagerly are passed
    in (the mixer passes its record's), and a mixer with its own record neither sees nor
    leaves failures in the shared one."""
    from polymixer.ops import choose_path
    from polymixer.ops.context import resolve_context
    from polymixer.ops.pom.chunk_ops import CompileRecord

    x = torch.randn(2, 9, 16)
    mixer = PolynomialMixer(16, settings=compiled_chunks)
    mode = resolve_context(2, 9, 9)
    clean = choose_path(mixer.settings, "fused", mixer.spec, mixer.state_width, x, x, mode)
    assert clean.compiled and clean.eager_functions == () and "failed" not in clean.reason
    marked = choose_path(mixer.settings, "fused", mixer.spec, mixer.state_width, x, x, mode,
                         compile_failures=("gated",))
    assert marked.eager_functions == ("gated",) and "eager for gated" in marked.reason
    never = choose_path(MixerSettings(compile="never"), "fused", mixer.spec, mixer.state_width, x, x, mode,
                        compile_failures=("gated",))
    assert never.eager_functions == ()  # nothing is compiled, nothing to fall back from

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    own = PolynomialMixer(16, settings=compiled_chunks)
    own.compile_record = CompileRecord()
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        torch.testing.assert_close(own(x), own.forward_reference(x))
    config = ("product", 2, 1, "cpu", torch.float32)
    assert "features" in own.compile_record.failed(config) or "feature_sum" in own.compile_record.failed(config)
    assert not compile_failures(config)  # the shared record is untouched
    assert own.execution_plan(x).eager_functions == own.compile_record.failed(config)
    assert mixer.execution_plan(x).eager_functions == ()


def test_plan_says_what_the_backward_pass_keeps():
    """fused keeps the two projections, lean none; the segment states are kept unless there
    is about one per token (causal), and the fused pass is exact either way."""
    never = MixerSettings(compile="never")
    x = torch.randn(2, 24, 16, dtype=torch.float64, requires_grad=True)
    for impl in ("fused", "lean"):
        mixer = PolynomialMixer(16, implementation=impl, settings=never).double()
        for kwargs, keep_states in (({}, True), ({"block_size": 6}, True), ({"causal": True}, False),
                                    ({"block_size": 2}, False)):
            plan = mixer.execution_plan(x, **kwargs)
            assert (plan.keep_projections, plan.keep_states) == (impl == "fused", keep_states), (impl, kwargs)
            assert "kept for the backward pass" in plan.reason
            up = torch.randn(2, 24, 16, dtype=torch.float64)
            y = mixer(x, **kwargs)
            ref = mixer.forward_reference(x, **kwargs)
            torch.testing.assert_close(y, ref)
            for a, b in zip(_grads(y, [x] + list(mixer.parameters()), up),
                            _grads(ref, [x] + list(mixer.parameters()), up)):
                torch.testing.assert_close(a, b)


def test_out_of_memory_in_a_compiled_chunk_is_not_a_compiler_failure(compiled_chunks, monkeypatch):
    def oom_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run

    monkeypatch.setattr(torch, "compile", oom_compile)
    with pytest.raises(RuntimeError, match="out of memory"):
        PolynomialMixer(16, settings=compiled_chunks)(torch.randn(2, 9, 16))
    assert not compile_failures(("product", 2, 1, "cpu", torch.float32))


def test_compile_setting_is_checked(monkeypatch):
    monkeypatch.setenv("POLYMIXER_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="POLYMIXER_COMPILE"):
        PolynomialMixer(8)(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="compile"):
        MixerSettings(compile="sometimes")
    with pytest.raises(ValueError, match="triton"):
        MixerSettings(triton="maybe")
    monkeypatch.setenv("POLYMIXER_COMPILE", "never")
    assert PolynomialMixer(8).settings.compile == "never"  # the environment is the default ...
    assert PolynomialMixer(8, settings=MixerSettings(compile="always")).settings.compile == "always"  # ... only


def test_auto_compiles_on_cpu_only_for_long_inputs():
    settings = MixerSettings.from_env({"POLYMIXER_COMPILE": "auto", "POLYMIXER_COMPILE_MIN_ROWS": "100"})
    assert not compile_decision(settings, "cpu", 99)[0]
    assert compile_decision(settings, "cpu", 100)[0]
    with pytest.raises(ValueError, match="POLYMIXER_COMPILE_MIN_ROWS"):
        MixerSettings.from_env({"POLYMIXER_COMPILE_MIN_ROWS": "many"})
    default = MixerSettings.from_env({})
    assert not compile_decision(default, "cpu", CPU_COMPILE_MIN_ROWS - 1)[0]
    assert compile_decision(default, "cpu", CPU_COMPILE_MIN_ROWS)[0]
    assert compile_decision(default, "cuda", 1)[0]  # decided from the device alone
    # and the mixer's plan follows: B * N token rows
    mixer = PolynomialMixer(8, settings=settings)
    assert not mixer.execution_plan(torch.randn(1, 99, 8)).compiled
    assert mixer.execution_plan(torch.randn(2, 50, 8)).compiled


def test_auto_compiles_calls_without_gradients_only_after_a_warm_up():
    settings = MixerSettings.from_env({"POLYMIXER_COMPILE_MIN_ROWS": "100", "POLYMIXER_COMPILE_AFTER_CALLS": "3"})
    assert settings.compile_after_calls == 3
    assert MixerSettings.from_env({}).compile_after_calls == CPU_COMPILE_AFTER_CALLS
    with pytest.raises(ValueError, match="POLYMIXER_COMPILE_AFTER_CALLS"):
        MixerSettings.from_env({"POLYMIXER_COMPILE_AFTER_CALLS": "few"})
    with pytest.raises(ValueError, match="compile_after_calls"):
        MixerSettings(compile_after_calls=-1)
    assert not compile_decision(settings, "cpu", 100, inference_calls=2)[0]
    assert compile_decision(settings, "cpu", 100, inference_calls=3)[0]
    assert not compile_decision(settings, "cpu", 99, inference_calls=3)[0]  # still too short
    assert compile_decision(settings, "cuda", 1, inference_calls=0)[0]  # no warm-up on CUDA
    mixer = PolynomialMixer(8, settings=settings)
    big, small = torch.randn(2, 50, 8), torch.randn(1, 5, 8)
    assert mixer.execution_plan(big).compiled  # with gradients: at once (training)
    with torch.no_grad():
        for calls in range(3):
            plan = mixer.execution_plan(big)  # asking does not count as a call
            assert not plan.compiled and f"call {calls + 1} without gradients" in plan.reason
            mixer(small)  # a short call counts all the same (and runs eagerly: 5 rows)
        assert mixer.inference_calls == 3
        assert mixer.execution_plan(big).compiled
    with torch.inference_mode():
        assert mixer.execution_plan(big).compiled
    fresh = PolynomialMixer(8, settings=settings)
    with torch.inference_mode():
        assert not fresh.execution_plan(big).compiled  # inference mode counts as without gradients
    y = fresh(small)  # with gradients: not counted
    assert y.requires_grad and fresh.inference_calls == 0


# ----------------------------------------------------------------------------- execution plan
def test_execution_plan_follows_implementation_and_inputs():
    x = torch.randn(2, 30, 16)
    never = MixerSettings(compile="never")
    for impl in ("fused", "lean"):
        mixer = PolynomialMixer(16, implementation=impl, settings=never)
        for kwargs, chunked in (({}, True), ({"causal": True}, True), ({"block_size": 7}, True),
                                ({"cu_seqlens": torch.tensor([0, 10, 30])}, False),
                                ({"mask": torch.rand(2, 30, 30) > 0.5}, False)):
            plan = mixer.execution_plan(x, **kwargs)
            assert (plan.form, plan.chunked, plan.compiled, plan.aggregation_backend) == (impl, chunked, False, "torch")
        state = mixer.init_state(2)
        plan = mixer.execution_plan(x, state=state)
        assert plan.form == "autograd" and "streaming state" in plan.reason
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert mixer.execution_plan(x).dtype == torch.bfloat16
        assert mixer.execution_plan(x).dtype is None
    auto = PolynomialMixer(16, implementation="autograd")
    plan = auto.execution_plan(x, causal=True)
    assert plan.form == "autograd" and plan.aggregation_backend == "torch"  # CPU: no Triton by default


def test_lean_inside_torch_compile_reports_the_autograd_form():
    """"lean" is a request: inside torch.compile the plain autograd form runs, and says so."""
    mixer = PolynomialMixer(16, implementation="lean")
    plans = []

    def run(x):
        plans.append(mixer.execution_plan(x))
        return mixer(x)

    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(torch.compile(run, fullgraph=True)(x), mixer(x), rtol=1e-4, atol=1e-5)
    assert plans and plans[0].form == "autograd"
    assert "torch.compile" in plans[0].reason and "'lean'" in plans[0].reason


def test_fused_degree_one_product_backward():
    """Degree 1 of the product variant through the fused pass (one feature part)."""
    mixer = PolynomialMixer(12, degree=1).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64, requires_grad=True)
    for kwargs in ({}, {"causal": True}, {"mask": torch.rand(2, 11, 11) > 0.3}):
        fast, ref = mixer(x, **kwargs), mixer.forward_reference(x, **kwargs)
        torch.testing.assert_close(fast, ref)
        params = [x] + list(mixer.parameters())
        for a, b in zip(torch.autograd.grad(fast.sum(), params), torch.autograd.grad(ref.sum(), params)):
            torch.testing.assert_close(a, b)

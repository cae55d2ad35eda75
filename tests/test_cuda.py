"""The mixer and a DiT on a CUDA device: every implementation against the reference,
token chunks of the GPU size, autocast training steps, torch.compile.

Skipped without CUDA (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py tests/test_triton.py tests/test_nn_mixer.py``.
The Triton aggregation kernels themselves are tested in ``test_triton.py``.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from polymixer import PolynomialMixer  # noqa: E402
from polymixer.ops.context import resolve_context  # noqa: E402

from test_nn_mixer import VARIANTS, _grads, _mode_kwargs  # noqa: E402

DEV = torch.device("cuda")


@pytest.mark.parametrize("implementation", ["fused", "lean", "autograd"])
@pytest.mark.parametrize("variant,heads", VARIANTS)
@pytest.mark.parametrize("n,dtype", [(1, torch.float64), (257, torch.float64), (63, torch.float32)])
def test_forward_and_gradients_match_reference_on_cuda(implementation, variant, heads, n, dtype):
    """As the CPU test: on CUDA the autograd form goes through the Triton aggregation."""
    gen = torch.Generator().manual_seed(n + heads)
    batch, dim = 2, 60
    mixer = PolynomialMixer(dim, degree=3 if variant == "power" else 2, variant=variant, heads=heads,
                            implementation=implementation).to(DEV, dtype)
    params = list(mixer.parameters())
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    for kwargs in _mode_kwargs(n, batch, gen):
        kwargs = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        x = torch.randn(batch, n, dim, dtype=dtype, generator=gen).to(DEV).requires_grad_()
        fast = mixer(x, **kwargs)
        ref = mixer.forward_reference(x, **kwargs)
        torch.testing.assert_close(fast, ref, **tol, msg=str(kwargs.keys()))
        upstream = torch.randn(fast.shape, dtype=dtype, generator=gen).to(DEV)
        for g_fast, g_ref in zip(_grads(fast, [x] + params, upstream), _grads(ref, [x] + params, upstream)):
            torch.testing.assert_close(g_fast, g_ref, **tol, msg=str(kwargs.keys()))


@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 4)])
def test_long_sequences_cross_gpu_chunks(variant, heads):
    """N large enough for several GPU-sized token chunks (and chunks across batch rows):
    fused and lean against autograd (Triton aggregation) in float32."""
    B, N, D = 3, 50_000, 32
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, N, D, generator=gen).to(DEV).requires_grad_()
    pad = (torch.rand(B, N, generator=gen) > 0.2).to(DEV)
    mixer = PolynomialMixer(D, variant=variant, heads=heads).to(DEV)
    params = list(mixer.parameters())
    up = torch.randn(B, N, D, generator=gen).to(DEV)
    for kwargs in ({}, {"context_mask": pad}, {"causal": True}, {"block_size": 4099}):
        outs = {}
        for impl in ("autograd", "fused", "lean"):
            mixer.implementation = impl
            y = mixer(x, **kwargs)
            outs[impl] = (y, _grads(y, [x] + params, up))
        for impl in ("fused", "lean"):
            torch.testing.assert_close(outs[impl][0], outs["autograd"][0], rtol=1e-4, atol=1e-5)
            for a, b in zip(outs[impl][1], outs["autograd"][1]):
                torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3 * b.abs().max().item())


def test_autograd_path_uses_the_triton_kernels():
    pytest.importorskip("triton")
    mixer = PolynomialMixer(32, implementation="autograd").to(DEV)
    x = torch.randn(2, 100, 32, device=DEV)
    h = mixer.features(x)
    from polymixer.ops.context import aggregate

    out = aggregate(h, resolve_context(2, 100, 100, causal=True, device=DEV), backend="triton")
    assert "TritonAggregate" in type(out.grad_fn).__name__
    plan = mixer.execution_plan(x, causal=True)
    assert plan.form == "autograd" and plan.aggregation_backend == "triton", plan
    mixer.implementation = "fused"  # on CUDA the causal mode runs the autograd form (Triton scan)
    plan = mixer.execution_plan(x, causal=True)
    assert plan.form == "autograd" and plan.aggregation_backend == "triton", plan
    assert mixer.execution_plan(x).form == "fused" and mixer.execution_plan(x).compiled


@pytest.mark.parametrize("variant", ["product", "power"])
def test_compile_fullgraph_on_cuda(variant):
    mixer = PolynomialMixer(64, variant=variant, heads=1 if variant == "product" else 4).to(DEV)
    compiled = torch.compile(mixer, fullgraph=True)
    x = torch.randn(2, 300, 64, device=DEV, requires_grad=True)
    for kwargs in ({}, {"causal": True}, {"block_size": 37}):
        y_c = compiled(x, **kwargs)
        y_e = mixer(x, **kwargs)
        torch.testing.assert_close(y_c, y_e, rtol=1e-4, atol=1e-5)
        (g_c,) = torch.autograd.grad(y_c.square().sum(), x)
        (g_e,) = torch.autograd.grad(y_e.square().sum(), x)
        torch.testing.assert_close(g_c, g_e, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mixer_kind", ["pom", "attention"])
def test_dit_bf16_training_steps_on_cuda(mixer_kind):
    """A few AdamW steps of a small DiT under bf16 autocast: finite, the loss goes down,
    and the fused PoM path gives the autograd path's first loss and gradients."""
    from polymixer.models import DiT, DiTConfig

    def build(impl):
        torch.manual_seed(0)
        cfg = DiTConfig(image_size=16, in_channels=1, patch_size=2, width=64, depth=2, heads=4,
                        mixer=mixer_kind, pom_implementation=impl, n_classes=10)
        return DiT(cfg).to(DEV)

    torch.manual_seed(1)
    x0 = torch.randn(16, 1, 16, 16, device=DEV)
    noise = torch.randn_like(x0)
    t = torch.rand(16, device=DEV)
    y = torch.randint(0, 10, (16,), device=DEV)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    target = noise - x0

    def loss_of(model):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(xt, t, y)
        return (out.float() - target).square().mean()

    model = build("fused")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = loss_of(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    if mixer_kind == "pom":
        a, b = build("fused"), build("autograd")
        for m in (a, b):  # adaLN-Zero starts at zero: make the mixers count
            torch.manual_seed(2)
            for p in m.parameters():
                torch.nn.init.normal_(p, std=0.05)
        la, lb = loss_of(a), loss_of(b)
        torch.testing.assert_close(la, lb, rtol=2e-2, atol=1e-3)
        ga = torch.autograd.grad(la, list(a.parameters()))
        gb = torch.autograd.grad(lb, list(b.parameters()))
        for u, v in zip(ga, gb):
            assert ((u - v).abs().max() / v.abs().max().clamp_min(1e-6)).item() < 0.1


@pytest.mark.parametrize("frame_memory", ["mean", "gated-decay", "window:2"])
@pytest.mark.parametrize("implementation", ["fused", "autograd"])
def test_rotary_and_frame_memory_on_cuda_match_the_cpu(frame_memory, implementation):
    """The options added for issues 23 and 24 (rotary positions over (frame, row, column), the
    frame memories) on CUDA: outputs and gradients equal the same mixer's on the CPU (float64),
    and streaming frame by frame equals the parallel form there."""
    torch.manual_seed(0)
    T, frames, dim = 7, 5, 12
    cpu = PolynomialMixer(dim, heads=2, rotary_axes=3, frame_memory=frame_memory,
                          implementation=implementation).double()
    with torch.no_grad():
        for name, p in cpu.named_parameters():
            if name.startswith("decay"):
                p.copy_(torch.randn(p.shape, dtype=p.dtype))
    gpu = PolynomialMixer(dim, heads=2, rotary_axes=3, frame_memory=frame_memory,
                          implementation=implementation).double().to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, frames * T, dim, dtype=torch.float64, generator=gen)
    pos = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(1), torch.arange(T), indexing="ij"),
                      -1).reshape(1, frames * T, 3).double().expand(2, -1, -1)
    upstream = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    outs = []
    for mixer, dev in ((cpu, "cpu"), (gpu, DEV)):
        xi = x.to(dev).requires_grad_()
        y = mixer(xi, block_size=T, positions=pos.to(dev))
        g = torch.autograd.grad(y, [xi] + list(mixer.parameters()), upstream.to(dev))
        outs.append([y.detach().cpu()] + [t.cpu() for t in g])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    state, steps = gpu.init_state(2), []
    with torch.no_grad():
        for f in range(frames):
            sl = slice(f * T, (f + 1) * T)
            y, state = gpu.step(x[:, sl].to(DEV), state, positions=pos[:, sl].to(DEV))
            steps.append(y.cpu())
    torch.testing.assert_close(torch.cat(steps, 1), outs[0][0], rtol=1e-9, atol=1e-9)

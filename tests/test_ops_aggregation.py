"""Every O(N) aggregation mode against the slow loop reference: values and gradients."""

import pytest
import torch

from polymixer.ops import aggregate, dense_context_mask, reference_mean, resolve_context

SIZES = [1, 63, 257]


def _modes(n: int, batch: int, generator: torch.Generator):
    """(name, kwargs) for every context mode at N = n tokens."""
    mask_pad = torch.rand(batch, n, generator=generator) > 0.3
    mask_pad[0, :] = False  # one fully padded row: an empty context must give zeros
    cuts = sorted(torch.randint(0, n + 1, (3,), generator=generator).tolist())
    cu = torch.tensor([0] + cuts + [n])
    lengths, rest = [], n
    while rest > 0:
        take = min(rest, int(torch.randint(1, 20, (1,), generator=generator)))
        lengths.append(take)
        rest -= take
    dense = torch.rand(batch, n, n, generator=generator) > 0.5
    return [
        ("full", {}),
        ("padding", {"context_mask": mask_pad}),
        ("causal", {"causal": True}),
        ("causal+padding", {"causal": True, "context_mask": mask_pad}),
        ("block_size=7", {"block_size": 7}),
        ("block_size=1", {"block_size": 1}),
        ("block_size>N", {"block_size": n + 5}),
        ("block+padding", {"block_size": 4, "context_mask": mask_pad}),
        ("block_lengths", {"block_lengths": lengths}),
        ("packed", {"cu_seqlens": cu}),
        ("packed causal", {"cu_seqlens": cu, "causal": True}),
        ("packed+padding", {"cu_seqlens": cu, "context_mask": mask_pad}),
        ("dense", {"mask": dense}),
    ]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_mode_matches_reference(n, dtype):
    gen = torch.Generator().manual_seed(n)
    batch, width = 2, 60
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for name, kwargs in _modes(n, batch, gen):
        h = torch.randn(batch, n, width, dtype=dtype, generator=gen, requires_grad=True)
        mode = resolve_context(batch, n, n, **kwargs)
        fast = aggregate(h, mode).expand(batch, n, width)
        dense = dense_context_mask(mode, batch, n, n)
        ref = reference_mean(h, dense)
        torch.testing.assert_close(fast, ref, **tol, msg=f"mode {name}")
        upstream = torch.randn(batch, n, width, dtype=fast.dtype, generator=gen)
        (g_fast,) = torch.autograd.grad(fast, h, upstream)
        (g_ref,) = torch.autograd.grad(ref, h, upstream)
        torch.testing.assert_close(g_fast, g_ref, **tol, msg=f"grad of mode {name}")


def test_dense_mask_semantics_from_the_spec():
    """The dense oracle itself, against the spec's set definitions written out by hand."""
    n, T = 10, 3
    mode = resolve_context(1, n, n, block_size=T)
    m = dense_context_mask(mode, 1, n, n)[0]
    for i in range(n):
        for j in range(n):
            assert bool(m[i, j]) == (j // T <= i // T)
    cu = torch.tensor([0, 4, 4, 10])
    m = dense_context_mask(resolve_context(1, n, n, cu_seqlens=cu, causal=True), 1, n, n)[0]
    seq = [0] * 4 + [2] * 6
    for i in range(n):
        for j in range(n):
            assert bool(m[i, j]) == (seq[i] == seq[j] and j <= i)


def test_empty_context_gives_zero_not_nan():
    h = torch.randn(2, 5, 4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    for kwargs in ({"context_mask": mask}, {"causal": True, "context_mask": mask}, {"block_size": 2, "context_mask": mask}):
        out = aggregate(h, resolve_context(2, 5, 5, **kwargs))
        assert torch.equal(out, torch.zeros_like(out))
    out = aggregate(h, resolve_context(2, 5, 5, mask=torch.zeros(2, 5, 5, dtype=torch.bool)))
    assert torch.equal(out, torch.zeros_like(out))


def test_bf16_features_accumulate_in_float32():
    h = torch.randn(2, 100, 8).bfloat16()
    for kwargs in ({}, {"causal": True}, {"block_size": 10}, {"cu_seqlens": torch.tensor([0, 30, 100])}):
        out = aggregate(h, resolve_context(2, 100, 100, **kwargs))
        assert out.dtype == torch.float32


def test_o_n_modes_build_no_quadratic_tensor():
    """No O(N) mode allocates an N x N tensor: the largest tensor saved for backward is O(N*F)."""
    n, width = 2048, 4
    h = torch.randn(1, n, width, requires_grad=True)
    cu = torch.tensor([0, 700, 2048])
    for kwargs in ({}, {"causal": True}, {"block_size": 64}, {"block_lengths": [1000, 1048]},
                   {"cu_seqlens": cu}, {"cu_seqlens": cu, "causal": True},
                   {"context_mask": torch.rand(1, n) > 0.5, "causal": True}):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = aggregate(h, resolve_context(1, n, n, **kwargs))
        out.sum().backward()
        assert max(sizes + [out.numel()]) <= 4 * n * width, kwargs


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"block_size": 3}, {"block_lengths": [1, 6, 2, 4]}],
                         ids=["full", "causal", "block", "lengths"])
@pytest.mark.parametrize("masked", [False, True])
def test_segment_means_adjoint_is_the_adjoint(kwargs, masked):
    """<segment_means(t), d> = <t, segment_means_adjoint(d)>: the fused pass's adjoint of
    the segment mean against autograd of the forward."""
    from polymixer.ops.aggregation import segment_counts, segment_means, segment_means_adjoint

    gen = torch.Generator().manual_seed(3)
    n, width = 13, 5
    weights = (torch.rand(2, n, generator=gen) > 0.3).double() if masked else None
    mode = resolve_context(2, n, n, **kwargs)
    seg = mode.segments(n)
    count = segment_counts(seg, weights, n, torch.float64, "cpu")
    total = torch.randn(2, seg.count, width, dtype=torch.float64, generator=gen, requires_grad=True)
    d = torch.randn(2, seg.count, width, dtype=torch.float64, generator=gen)
    (expected,) = torch.autograd.grad(segment_means(seg, total, count), total, d)
    torch.testing.assert_close(segment_means_adjoint(seg, d.clone(), count), expected)


def test_a_new_mode_is_one_class():
    """A mode defined outside the package (anti-causal: query i reads j >= i) runs through
    the fused pass and the reference with nothing else to write."""
    from dataclasses import dataclass
    from typing import ClassVar

    from polymixer import PolynomialMixer
    from polymixer.ops import ContextMode, choose_path, mean_dense
    from polymixer.ops.pom import fused_mix

    @dataclass(frozen=True, kw_only=True, eq=False)
    class AntiCausal(ContextMode):
        kind: ClassVar[str] = "anti-causal"

        def aggregate(self, h, stream=None):
            acc = h.to(torch.float64 if h.dtype == torch.float64 else torch.float32)
            total = acc.flip(1).cumsum(1).flip(1)
            count = torch.arange(h.shape[1], 0, -1, dtype=acc.dtype, device=h.device)
            return total / count.view(1, -1, 1)

        def allowed(self, num_queries, num_context, device=None):
            i = torch.arange(num_queries, device=device).view(-1, 1)
            return torch.arange(num_context, device=device).view(1, -1) >= i

    mode = AntiCausal()
    mixer = PolynomialMixer(12, variant="power", heads=2).double()
    x = torch.randn(2, 10, 12, dtype=torch.float64, requires_grad=True)
    plan = choose_path(mixer.settings, "lean", mixer.spec, mixer.state_width, x, x, mode)
    assert plan.form == "lean" and not plan.chunked
    y = fused_mix(x, None, mixer.weights(), mixer.spec, mode, plan)
    ref = mixer.read_out(x, mean_dense(mixer.features(x), mode.dense_mask(2, 10, 10)))
    torch.testing.assert_close(y, ref)
    params = [x] + list(mixer.parameters())
    for a, b in zip(torch.autograd.grad(y.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b)

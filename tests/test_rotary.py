"""Rotary positions inside PoM (docs/design.md, section 8): the mixer against a dense oracle
with explicit (F, F) rotation matrices in every context mode (outputs and gradients), the
relative-position property, streaming equals the parallel block-causal form, the models
(image DiT, video DiT: frame-by-frame step and sequential sampling equal the joint forms),
the execution plan and bad input."""

import dataclasses
import json
import math

import pytest
import torch

from polymixer import PolynomialMixer
from polymixer.models import DiT, DiTConfig, VideoDiT, VideoDiTConfig
from polymixer.models.blocks import token_coordinates
from polymixer.ops.context import dense_context_mask, resolve_context
from polymixer.ops.pom.rotary import rotary_angles, rotary_layout, rotate
from polymixer.pipeline import SamplingConfig
from polymixer.video import sample_video

from helpers import random_weights

f64 = torch.float64


# ------------------------------------------------------------------ the oracle
def rotation_matrices(positions: torch.Tensor, frequencies: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """``R_p: (..., N, F, F)``, block-diagonal, pair m rotated by ``p[axis[m]] * frequencies[m]``,
    written entry by entry."""
    lead = positions.shape[:-1]
    pairs = frequencies.shape[0]
    R = torch.zeros(*lead, 2 * pairs, 2 * pairs, dtype=f64)
    for m in range(pairs):
        a = positions[..., int(axis[m])].to(f64) * float(frequencies[m])
        R[..., 2 * m, 2 * m] = a.cos()
        R[..., 2 * m, 2 * m + 1] = -a.sin()
        R[..., 2 * m + 1, 2 * m] = a.sin()
        R[..., 2 * m + 1, 2 * m + 1] = a.cos()
    return R


def dense_oracle(mixer: PolynomialMixer, x, context, positions, context_positions, **mode_kwargs):
    """The rotary mixer written out: ``H_i = sum_j mask_ij R_{p_j} h_j / |C_i|``, then
    ``W_o (s_i * R_{p_i}^T H_i)`` ("state") or ``W_o ((R_{p_i} s_i) * H_i)`` ("gate")."""
    context = x if context is None else context
    context_positions = positions if context_positions is None else context_positions
    B, M, N = x.shape[0], x.shape[1], context.shape[1]
    mode = resolve_context(B, M, N, **mode_kwargs)
    mask = dense_context_mask(mode, B, M, N).to(f64)  # (B, M, N)
    frequencies, axis = mixer.rotary_layout()
    Rc = rotation_matrices(context_positions, frequencies, axis).expand(B, N, -1, -1)
    Rq = rotation_matrices(positions, frequencies, axis).expand(B, M, -1, -1)
    h = torch.einsum("bnfg,bng->bnf", Rc, mixer.features(context))
    H = torch.einsum("bmn,bnf->bmf", mask, h) / mask.sum(-1, keepdim=True).clamp_min(1)
    s = mixer.gate(x)
    s = s.repeat_interleave(mixer.state_width // s.shape[-1], dim=-1)
    if mixer.rotary_query == "state":
        gated = s * torch.einsum("bmgf,bmg->bmf", Rq, H)  # R^T H
    else:
        gated = torch.einsum("bmfg,bmg->bmf", Rq, s) * H
    return mixer.out_proj(gated)


def grid_positions(rows, cols):
    return token_coordinates(rows, cols)


def make_mixer(variant="product", heads=1, rotary_query="state", axes=2, dim=6, seed=0, **kw):
    torch.manual_seed(seed)
    if variant == "product":
        mixer = PolynomialMixer(dim, degree=2, expand=1, heads=heads, rotary_axes=axes, rotary_query=rotary_query,
                                **kw)
    else:
        mixer = PolynomialMixer(dim, degree=3, expand=2, variant="power", heads=heads, rotary_axes=axes,
                                rotary_query=rotary_query, **kw)
    mixer = mixer.double()
    with torch.no_grad():  # O(1) weights so that the rotation matters everywhere
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return mixer


B, ROWS, COLS = 2, 7, 9  # N = 63 tokens on an odd grid
N = ROWS * COLS


def _modes():
    g = torch.Generator().manual_seed(3)
    padding = torch.rand(B, N, generator=g) > 0.3
    padding[1, :] = False  # an empty context: zeros, not NaN
    dense = torch.rand(B, N, N, generator=g) > 0.5
    return {
        "full": {},
        "padding": dict(context_mask=padding),
        "causal": dict(causal=True),
        "block-causal": dict(block_size=COLS),  # one row per block
        "block-lengths": dict(block_lengths=[10, 20, 33]),
        "packed": dict(cu_seqlens=torch.tensor([0, 17, 40, 63])),
        "packed-causal": dict(cu_seqlens=torch.tensor([0, 17, 40, 63]), causal=True),
        "dense": dict(mask=dense),
    }


MODES = _modes()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant,heads,rotary_query", [("product", 1, "state"), ("product", 3, "gate"),
                                                         ("power", 6, "state"), ("power", 1, "gate")])
def test_every_mode_equals_the_dense_rotation_oracle(mode, variant, heads, rotary_query):
    kwargs = MODES[mode]
    mixer = make_mixer(variant, heads, rotary_query)
    batch = 1 if "cu_seqlens" in kwargs else B
    kwargs = {k: (v[:batch] if k in ("context_mask", "mask") else v) for k, v in kwargs.items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, N, mixer.dim, generator=g, dtype=f64, requires_grad=True)
    positions = grid_positions(ROWS, COLS)
    y = mixer(x, positions=positions, **kwargs)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = dense_oracle(mixer, x_ref, None, positions, None, **kwargs)
    assert (y - ref).abs().max() < 1e-12
    assert (mixer.forward_reference(x, positions=positions, **kwargs) - ref).abs().max() < 1e-12
    # gradients with a random upstream gradient: inputs and every parameter
    upstream = torch.randn(y.shape, generator=g, dtype=f64)
    params = list(mixer.parameters())
    got = torch.autograd.grad(y, [x] + params, upstream)
    want = torch.autograd.grad(ref, [x_ref] + params, upstream)
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-11 * max(1.0, b.abs().max().item())
    if mode == "full":  # rotary changes the function (the test is not trivially passing)
        plain = PolynomialMixer(mixer.dim, degree=mixer.degree, expand=mixer.expand, variant=variant, heads=heads)
        plain = plain.double()
        plain.load_state_dict(mixer.state_dict())
        assert (plain(x) - y).abs().max() > 1e-3


@pytest.mark.parametrize("rotary_query", ["state", "gate"])
def test_cross_mixing_and_per_sample_positions_equal_the_oracle(rotary_query):
    mixer = make_mixer("product", 2, rotary_query, axes=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 17, mixer.dim, generator=g, dtype=f64)
    context = torch.randn(B, N, mixer.dim, generator=g, dtype=f64)
    positions = torch.randint(-5, 20, (B, 17, 3), generator=g)  # (B, M, A), one set per sample
    context_positions = torch.rand(B, N, 3, generator=g, dtype=f64) * 10  # float coordinates
    context_mask = torch.rand(B, N, generator=g) > 0.4
    y = mixer(x, context, positions=positions, context_positions=context_positions, context_mask=context_mask)
    ref = dense_oracle(mixer, x, context, positions, context_positions, context_mask=context_mask)
    assert (y - ref).abs().max() < 1e-12


CHUNK_MODES = {name: MODES[name] for name in ("full", "padding", "causal", "block-lengths", "packed", "dense")}


@pytest.mark.parametrize("mode", list(CHUNK_MODES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_and_lean_chunks_equal_autograd(mode, dtype):
    """The fused and lean forms rotate chunk by chunk: chunks of 10 rows split the 63 tokens
    of a batch row unevenly (the full mode's chunks are parts of one row) and 100 rows take
    a whole row plus part of the next; per-sample float positions; outputs and the
    gradients of the inputs and every parameter against the autograd form."""
    from polymixer.ops.plan import MixerSettings

    kwargs = dict(CHUNK_MODES[mode])
    batch = 1 if "cu_seqlens" in kwargs else B
    kwargs = {k: (v[:batch] if k in ("context_mask", "mask") else v) for k, v in kwargs.items()}
    g = torch.Generator().manual_seed(5)
    positions = torch.rand(batch, N, 2, generator=g, dtype=f64) * 8
    x0 = torch.randn(batch, N, 6, generator=g, dtype=f64)
    upstream = torch.randn(batch, N, 6, generator=g, dtype=f64).to(dtype)
    results = {}
    for implementation, rows in (("autograd", None), ("fused", 10), ("lean", 10), ("fused", 100)):
        mixer = make_mixer("product", 3, "state", settings=MixerSettings(chunk_rows=rows, compile="never"),
                           implementation=implementation).to(dtype)
        x = x0.to(dtype).requires_grad_(True)
        assert mixer.execution_plan(x, positions=positions, **kwargs).form == implementation
        y = mixer(x, positions=positions, **kwargs)
        grads = torch.autograd.grad(y, [x] + list(mixer.parameters()), upstream)
        results[(implementation, rows)] = [y.detach()] + list(grads)
    tol = 1e-11 if dtype == f64 else 2e-5
    want = results[("autograd", None)]
    for key, got in results.items():
        for a, b in zip(got, want):
            assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item()), key


def test_fused_self_mixing_computes_the_rotations_once_per_pass(monkeypatch):
    """Self-mixing passes one angle tensor for the context and the queries: the forward and
    the backward each turn it into rotations once, not once for each role, also under saved-
    tensor hooks that hand each saved tensor back as a new object (offloading, compression)."""
    from polymixer.ops.plan import MixerSettings
    from polymixer.ops.pom import chunked

    calls = []
    real = chunked.turns
    monkeypatch.setattr(chunked, "turns", lambda angles: calls.append(angles.shape) or real(angles))
    mixer = make_mixer("product", 2, "state", settings=MixerSettings(chunk_rows=10, compile="never"),
                       implementation="fused").double()
    x = torch.randn(B, N, 6, dtype=f64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t.clone()):
        y = mixer(x, positions=grid_positions(ROWS, COLS))
    assert len(calls) == 1
    y.sum().backward()
    assert len(calls) == 2 and x.grad is not None


def test_fused_cross_mixing_with_shared_context_positions():
    """Cross-mixing in the fused form: queries and context at different positions, the
    context's shared by the batch (a (N, A) tensor), chunks that cross batch rows."""
    from polymixer.ops.plan import MixerSettings

    g = torch.Generator().manual_seed(6)
    x = torch.randn(B, 11, 6, generator=g, dtype=f64, requires_grad=True)
    context = torch.randn(B, N, 6, generator=g, dtype=f64, requires_grad=True)
    positions = torch.randint(0, 9, (B, 11, 2), generator=g)
    context_positions = grid_positions(ROWS, COLS)
    outs = []
    for implementation in ("autograd", "fused"):
        mixer = make_mixer("power", 2, "state", implementation=implementation,
                           settings=MixerSettings(chunk_rows=7, compile="never"))
        y = mixer(x, context, positions=positions, context_positions=context_positions)
        outs.append([y] + list(torch.autograd.grad(y.square().sum(), [x, context] + list(mixer.parameters()))))
    ref = dense_oracle(mixer, x, context, positions, context_positions)
    assert (outs[1][0] - ref).abs().max() < 1e-12
    for a, b in zip(*outs):
        assert (a - b).abs().max() < 1e-11 * max(1.0, b.abs().max().item())


def test_gradcheck_of_the_rotary_mixer():
    mixer = make_mixer("power", 2, "gate", axes=2, dim=3)  # F = 6, awkward D
    x = torch.randn(2, 7, 3, dtype=f64, requires_grad=True)
    positions = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [3, 5]])
    for kwargs in ({}, dict(causal=True), dict(block_size=3)):
        assert torch.autograd.gradcheck(lambda t: mixer(t, positions=positions, **kwargs), (x,))
    h = torch.randn(3, 6, dtype=f64, requires_grad=True)
    angles = torch.randn(3, 3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(rotate, (h, angles))


def test_rotate_is_the_block_rotation_matrix():
    frequencies, axis = rotary_layout(5, 2)
    positions = torch.tensor([[0, 0], [3, -2], [7, 7]])
    h = torch.randn(3, 10, dtype=f64)
    R = rotation_matrices(positions, frequencies, axis)
    angles = rotary_angles(positions, frequencies, axis, f64)
    assert (rotate(h, angles) - torch.einsum("nfg,ng->nf", R, h)).abs().max() < 1e-14
    assert (rotate(rotate(h, angles), -angles) - h).abs().max() < 1e-14
    # float32 (complex product) and bfloat16 (real form: no complex type) agree with it
    assert (rotate(h.float(), angles.float()) - rotate(h, angles)).abs().max() < 1e-5
    low = rotate(h.bfloat16(), angles.float())
    assert low.dtype == torch.bfloat16 and (low.double() - rotate(h, angles)).abs().max() < 0.1


def test_layout_frequencies_suit_small_grids():
    frequencies, axis = rotary_layout(12, 3, math.pi, math.pi / 32)
    assert axis.tolist() == [0, 1, 2] * 4  # pairs taken in turn by the axes
    for a in range(3):
        f = frequencies[axis == a]
        assert f[0] == math.pi and abs(f[-1] - math.pi / 32) < 1e-15
        ratios = f[1:] / f[:-1]
        assert torch.allclose(ratios, ratios[:1].expand_as(ratios))  # geometric
    # every pair turns by at least a fifth of a radian over an 8-token side (base 10000 would not)
    assert (frequencies * 7).min() > 0.2
    single, _ = rotary_layout(1, 1)
    assert single.tolist() == [math.pi]


# ------------------------------------------------------------------ relative positions
@pytest.mark.parametrize("mode", ["full", "causal", "block-causal", "padding"])
def test_state_placement_depends_on_relative_positions_only(mode):
    mixer = make_mixer("product", 3, "state", axes=2)
    x = torch.randn(B, N, mixer.dim, dtype=f64)
    positions = grid_positions(ROWS, COLS)
    y = mixer(x, positions=positions, **MODES[mode])
    for shift in ([5, -3], [0.5, 11.25]):
        moved = mixer(x, positions=positions + torch.tensor(shift, dtype=f64), **MODES[mode])
        assert (moved - y).abs().max() < 1e-12
    # but not on the absolute positions of single tokens
    other = positions.clone()
    other[0] += 1
    assert (mixer(x, positions=other, **MODES[mode]) - y).abs().max() > 1e-6


def test_gate_placement_is_relative_summed_over_each_pair():
    """(R_{p_i} s) . (R_{p_j} h) per pair depends on p_j - p_i only; its two channels alone do not,
    so the "gate" placement's output is not shift-invariant (docs/design.md, section 8)."""
    frequencies, axis = rotary_layout(4, 2)
    s, h = torch.randn(8, dtype=f64), torch.randn(8, dtype=f64)
    p_i, p_j = torch.tensor([[2.0, 5.0]], dtype=f64), torch.tensor([[-1.0, 3.0]], dtype=f64)

    def per_pair(pi, pj):
        a = rotate(s, rotary_angles(pi, frequencies, axis, f64)[0])
        b = rotate(h, rotary_angles(pj, frequencies, axis, f64)[0])
        return (a * b).view(4, 2)

    shift = torch.tensor([[4.0, -7.0]], dtype=f64)
    base, moved = per_pair(p_i, p_j), per_pair(p_i + shift, p_j + shift)
    assert (base.sum(-1) - moved.sum(-1)).abs().max() < 1e-14
    assert (base - moved).abs().max() > 1e-3
    mixer = make_mixer("product", 1, "gate", axes=2)
    x = torch.randn(1, N, mixer.dim, dtype=f64)
    positions = grid_positions(ROWS, COLS)
    y, moved_y = mixer(x, positions=positions), mixer(x, positions=positions + 3)
    assert (y - moved_y).abs().max() > 1e-6


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("rotary_query", ["state", "gate"])
@pytest.mark.parametrize("blocks", [[9] * 7, [1] * 63, [5, 20, 1, 37]])
def test_streaming_equals_parallel_block_causal_float64(rotary_query, blocks):
    mixer = make_mixer("power", 6, rotary_query, axes=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, sum(blocks), mixer.dim, generator=g, dtype=f64)
    positions = torch.randint(0, 9, (sum(blocks), 3), generator=g)
    parallel = mixer(x, positions=positions, block_lengths=blocks)
    state, start, outs = mixer.init_state(B), 0, []
    for t in blocks:  # positions continue across steps: each block carries its own
        y, state = mixer.step(x[:, start:start + t], state, positions=positions[start:start + t])
        outs.append(y)
        start += t
    assert (torch.cat(outs, 1) - parallel).abs().max() < 1e-12
    assert state.total.dtype == f64 and torch.equal(state.count, torch.full((B,), 63.0, dtype=f64))
    # the same MixerState holds the sum of the rotated features
    angles = mixer.rotary_angles(positions, f64)
    assert (state.total - rotate(mixer.features(x), angles).sum(1)).abs().max() < 1e-12
    # forward with the state of a prefix: the rest of the block-causal form
    _, prefix = mixer.step(x[:, :blocks[0]], mixer.init_state(B), positions=positions[:blocks[0]])
    rest = mixer(x[:, blocks[0]:], state=prefix, positions=positions[blocks[0]:], block_lengths=blocks[1:])
    assert (rest - parallel[:, blocks[0]:]).abs().max() < 1e-12


def test_torch_compile_fullgraph_matches_eager():
    # PolynomialMixer.forward's compiled code is shared by every test that compiles a mixer:
    # start and end clean, so that recompiles here (or there) do not switch on dynamic shapes
    torch._dynamo.reset()
    mixer = PolynomialMixer(16, heads=4, rotary_axes=3)
    x = torch.randn(2, 36, 16)
    positions = token_coordinates(3, 3, frames=4)
    compiled = torch.compile(mixer, fullgraph=True)
    for kwargs in ({}, {"block_size": 9}):
        torch.testing.assert_close(compiled(x, positions=positions, **kwargs), mixer(x, positions=positions, **kwargs),
                                   rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------------ plan and errors
def test_plan_fused_for_the_state_placement_autograd_for_the_gate():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    positions = token_coordinates(4, 4)
    for implementation in ("fused", "lean"):
        mixer = PolynomialMixer(8, rotary_axes=2, implementation=implementation)
        assert mixer.execution_plan(x, positions=positions).form == implementation
        assert mixer.execution_plan(x, positions=positions, causal=True).form == implementation
        gate = PolynomialMixer(8, rotary_axes=2, implementation=implementation, rotary_query="gate")
        plan = gate.execution_plan(x, positions=positions)
        assert plan.form == "autograd" and "rotary_query='gate'" in plan.reason
        assert gate(x, positions=positions).shape == x.shape
        state = mixer.init_state(2)
        assert mixer.execution_plan(x, state=state, positions=positions).form == "autograd"  # a stream
    plain = PolynomialMixer(8)
    assert plain.execution_plan(x).form == "fused" and not plain.uses_positions
    assert PolynomialMixer(8, rotary_axes=1).uses_positions


def test_bad_input_errors():
    with pytest.raises(ValueError, match="odd"):
        PolynomialMixer(3, degree=1, expand=1, rotary_axes=1)  # F = 3
    with pytest.raises(ValueError, match="rotary_axes"):
        PolynomialMixer(8, rotary_axes=4)
    with pytest.raises(ValueError, match="rotary_query"):
        PolynomialMixer(8, rotary_axes=2, rotary_query="key")
    with pytest.raises(ValueError, match="rotary_min_freq"):
        PolynomialMixer(8, rotary_axes=2, rotary_min_freq=4.0)
    mixer = PolynomialMixer(8, rotary_axes=2)
    x = torch.randn(2, 6, 8)
    with pytest.raises(ValueError, match="positions: this mixer has rotary positions"):
        mixer(x)
    with pytest.raises(ValueError, match=r"positions: expected shape \(6, 2\)"):
        mixer(x, positions=torch.zeros(6, 3))
    with pytest.raises(ValueError, match="positions: expected shape"):
        mixer(x, positions=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="positions: expected shape"):
        mixer(x, positions=torch.zeros(3, 6, 2))
    with pytest.raises(TypeError, match="positions"):
        mixer(x, positions=torch.zeros(6, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_positions"):
        mixer(x, torch.randn(2, 4, 8), positions=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="positions: this mixer has rotary positions"):
        mixer.step(x, mixer.init_state(2))
    with pytest.raises(ValueError, match="rotary_axes=0"):
        PolynomialMixer(8)(x, positions=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="pom_rotary"):
        DiTConfig(pom_rotary=4)
    with pytest.raises(ValueError, match="pom_rotary"):
        DiT(DiTConfig(image_size=8, width=32, depth=1, heads=2, pom_rotary=3))
    with pytest.raises(ValueError, match="pom_rotary"):
        VideoDiT(VideoDiTConfig(image_size=8, width=32, depth=1, heads=2, pom_rotary=2))


# ------------------------------------------------------------------ models


def tiny_video(mixer="pom", dtype=f64, **kw):
    base = dict(image_size=8, in_channels=1, patch_size=2, width=32, depth=3, heads=2, mlp_ratio=2.0, frames=4,
                mixer=mixer, n_classes=10, pom_rotary=3)
    base.update(kw)
    torch.manual_seed(0)
    return random_weights(VideoDiT(VideoDiTConfig(**base)), dtype)


def test_image_dit_with_rotary_positions():
    config = DiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, pom_rotary=2,
                       mixer="pom, frame-local pom + attention")
    torch.manual_seed(0)
    model = random_weights(DiT(config), f64)
    assert model.uses_positions and all(block.uses_positions for block in model.blocks)
    x, t, y = torch.randn(2, 1, 8, 8, dtype=f64), torch.rand(2, dtype=f64), torch.tensor([1, 2])
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a non-square size at sampling time works too (positions follow the grid)
    assert model(torch.randn(1, 1, 6, 10, dtype=f64), t[:1], y[:1]).shape == (1, 1, 6, 10)
    # the same weights without rotary compute another function
    plain = DiT(dataclasses.replace(config, pom_rotary=0)).to(f64).eval()
    plain.load_state_dict(model.state_dict())
    assert (plain(x, t, y) - out).abs().max() > 1e-4


def test_rotary_model_saves_and_loads(tmp_path):
    config = VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, frames=4,
                            pom_rotary=3)
    torch.manual_seed(0)
    model = random_weights(VideoDiT(config), torch.float32)
    model.save_pretrained(tmp_path / "m")
    loaded = VideoDiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.pom_rotary == 3 and loaded.uses_positions
    x, t, y = torch.randn(1, 3, 1, 8, 8), torch.rand(1), torch.tensor([4])
    assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_configs_without_the_field_load_with_rotary_off():
    config = DiTConfig(image_size=8, width=32, depth=1, heads=2)
    data = config.to_dict()
    blob = json.loads(json.dumps(data))
    fields = blob.get("config", blob)
    assert fields.pop("pom_rotary") == 0
    loaded = DiTConfig.from_dict(blob)
    assert loaded.pom_rotary == 0 and not DiT(loaded).uses_positions


@pytest.mark.parametrize("mixer", ["pom", "frame-local pom, pom", "pom + frame-local attention"])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_video_streaming_frames_equals_joint_float64(mixer, noise_levels):
    model = tiny_video(mixer, noise_levels=noise_levels)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=f64)
    t = torch.rand((2, 5) if noise_levels == "frame" else (2,), generator=g, dtype=f64)
    y = torch.tensor([1, 3])
    joint = model(x, t, y)
    state, outs = model.init_state(2, dtype=f64), []
    for f in range(5):
        out, state = model.step(x[:, f:f + 1], t[:, f:f + 1] if t.dim() == 2 else t, y, state, frame_offset=f)
        outs.append(out)
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    # a continuation: frames 2.. of the clip at frame_offset 2 after a two-frame prefix
    tt = (lambda a, b: t[:, a:b]) if t.dim() == 2 else (lambda a, b: t)
    _, prefix = model.step(x[:, :2], tt(0, 2), y, model.init_state(2, dtype=f64))
    rest, _ = model.step(x[:, 2:], tt(2, 5), y, prefix, frame_offset=2)
    assert (rest - joint[:, 2:]).abs().max() < 1e-12
    # the frame position matters (a later offset is another input for the rotary mixers)
    moved, _ = model.step(x[:, 2:], tt(2, 5), y, prefix, frame_offset=3)
    assert (moved - rest).abs().max() > 1e-6


def test_video_temporal_patch_rotary_streaming():
    model = tiny_video(temporal_patch=2, frames=4)
    x = torch.randn(2, 6, 1, 8, 8, dtype=f64)
    t, y = torch.rand(2, dtype=f64), torch.tensor([0, 1])
    joint = model(x, t, y)
    stream, _ = model.step(x, t, y, model.init_state(2, dtype=f64))
    assert (stream - joint).abs().max() < 1e-12


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_video_sequential_sampling_equals_joint_float64(sampler):
    model = tiny_video(depth=2)
    kw = dict(frames=4, steps=3, cfg_scale=2.0, sampler=sampler, seed=1)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="sequential", **kw)
    assert joint.shape == (2, 4, 1, 8, 8)
    assert (seq - joint).abs().max() < 1e-10

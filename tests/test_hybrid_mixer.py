"""Hybrid blocks: mixers summed in parallel (``"pom + frame-local attention"``), each member
frame-local or not; streaming equals the parallel forward, and the state stays constant
when only frame-local members lack one."""

import pytest
import torch

from polymixer.models import VideoDiT, VideoDiTConfig, build_model
from polymixer.models.mixers import MixerSum, StateTuple, mixer_names, parse_mixer_pattern
from polymixer.models.presets import dit_config
from polymixer.pipeline import SamplingConfig
from polymixer.video import sample_video

from helpers import random_weights


def test_pattern_of_hybrids():
    layers = parse_mixer_pattern("pom + frame-local attention, frame-local pom", depth=3)
    assert [str(layer) for layer in layers] == ["pom + frame-local attention", "frame-local pom",
                                                "pom + frame-local attention"]
    assert layers[0].hybrid and not layers[1].hybrid and layers[1].frame_local
    assert mixer_names("pom + frame-local attention") == {"pom", "attention"}
    for bad in ("pom +", "+ pom", "pom + nope", "frame-local + pom"):
        with pytest.raises(ValueError, match="mixer: bad entry"):
            parse_mixer_pattern(bad)


def _video(mixer, noise_levels="clip", **kw):
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=4, mixer=mixer, noise_levels=noise_levels, n_classes=10,
                                    **kw))
    return random_weights(model, torch.float64)


@pytest.mark.parametrize("mixer,constant", [("pom + frame-local attention", True), ("pom + attention", False),
                                            ("frame-local pom + attention", False)])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_hybrid_streams_exactly(mixer, constant, noise_levels):
    model = _video(mixer, noise_levels)
    assert isinstance(model.blocks[0].mixer, MixerSum)
    assert model.can_stream() and model.has_constant_state() == constant
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand((2, 5) if noise_levels == "frame" else (2,), generator=g, dtype=torch.float64)
    y = torch.tensor([3, 7])
    joint = model(x, t, y)
    state = model.init_state(2, dtype=torch.float64)
    outs = []
    for f in range(5):
        out, state = model.step(x[:, f:f + 1], t[:, f:f + 1] if t.dim() == 2 else t, y, state, frame_offset=f)
        outs.append(out)
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    assert isinstance(state["0"], StateTuple)
    local = [m.frame_local for m in model.blocks[0].layer.members]
    assert [s is None for s in state["0"].states] == local
    # frames never see later ones, and do see earlier ones
    x2 = x.clone()
    x2[:, 2] += 1
    changed = (model(x2, t, y) - joint).abs().amax(dim=(2, 3, 4))
    assert (changed[:, :2] == 0).all() and (changed[:, 2:] > 1e-6).all()


def test_hybrid_sequential_sampling_equals_joint():
    model = _video("pom + frame-local attention")
    kw = dict(frames=4, steps=3, cfg_scale=2.0, sampler="heun", seed=3)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 5]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 5]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10


def test_hybrid_image_block_sums_its_members():
    torch.manual_seed(0)
    model = build_model(dit_config("DiT-T/4", "pom + frame-local attention", image_size=16, in_channels=1,
                                   n_classes=3, pom_rotary=0))  # called below without positions
    mixer = model.blocks[0].mixer
    h = torch.randn(2, 16, model.config.width)
    # an image is one frame: the frame-local member mixes it whole
    torch.testing.assert_close(mixer(h), mixer.mixers[0](h) + mixer.mixers[1](h))
    out = model(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 2]))
    assert out.shape == (2, 1, 16, 16)
    assert model.config.mlp_ratio == 3.0  # a pattern with PoM blocks gets PoM's preset MLP ratio


# ----------------------------------------------------------------------------- a convolution beside the mixer
def test_grid_conv_is_identity_at_start_and_a_depthwise_conv_per_frame():
    from polymixer.models.mixers import GridConv

    conv = GridConv(6).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3 * 12, 6, generator=g, dtype=torch.float64)  # 3 frames of a 3x4 grid
    torch.testing.assert_close(conv(x, grid=(3, 4)), x)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.randn(conv.conv.weight.shape, generator=g, dtype=torch.float64))
        conv.conv.bias.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    y = conv(x, grid=(3, 4))
    w, b = conv.conv.weight, conv.conv.bias
    for f in range(3):  # the definition, one frame and one channel at a time, no padding across frames
        frame = x[:, f * 12:(f + 1) * 12].reshape(2, 3, 4, 6)
        padded = torch.nn.functional.pad(frame.permute(0, 3, 1, 2), (1, 1, 1, 1))
        for r in range(3):
            for c in range(4):
                want = (padded[:, :, r:r + 3, c:c + 3] * w[:, 0]).sum(dim=(2, 3)) + b
                torch.testing.assert_close(y[:, f * 12 + r * 4 + c], want)
    with pytest.raises(ValueError, match="grid"):
        conv(x)
    with pytest.raises(ValueError, match="do not tile"):
        conv(x, grid=(5, 5))


def _assert_streams_frame_by_frame(model):
    """A per-frame-noise video model: frame by frame equals joint (float64), and a change to
    frame 1 leaves frame 0 alone and reaches every later frame."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(2, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 7])
    joint = model(x, t, y)
    state = model.init_state(2, dtype=torch.float64)
    outs = []
    for f in range(4):
        out, state = model.step(x[:, f:f + 1], t[:, f:f + 1], y, state, frame_offset=f)
        outs.append(out)
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    x2 = x.clone()
    x2[:, 1, :, 0, 0] += 1  # one pixel of frame 1: earlier frames unchanged
    changed = (model(x2, t, y) - joint).abs().amax(dim=(2, 3, 4))
    assert (changed[:, :1] == 0).all() and (changed[:, 1:] > 1e-6).all()



@pytest.mark.parametrize("mixer", ["pom + conv", "pom + frame-local conv", "frame-local conv, pom",
                                   "pom + local-attention", "local-attention, pom"])
def test_grid_mixer_beside_pom_streams_exactly(mixer):
    """A convolution or a neighbourhood softmax over each frame, beside PoM or in its own
    blocks: frame by frame equals joint, and a frame never changes earlier frames."""
    model = _video(mixer, "frame")
    assert model.can_stream() and model.has_constant_state()
    _assert_streams_frame_by_frame(model)


def test_conv_beside_the_mixer_trains_in_an_image_dit():
    from polymixer.models.mixers import GridConv

    torch.manual_seed(0)
    model = build_model(dit_config("DiT-T/4", "pom + conv", image_size=16, in_channels=1, n_classes=3))
    conv = model.blocks[0].mixer.mixers[1]
    assert isinstance(conv, GridConv)
    h = torch.randn(2, 16, model.config.width)
    torch.testing.assert_close(conv(h, grid=(4, 4)), h)  # identity after the DiT initialisation
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, y = torch.randn(4, 1, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 0])
    target = torch.randn(4, 1, 16, 16)
    for _ in range(3):  # zero output layer and gates at start: the third step reaches the conv
        opt.zero_grad()
        (model(x, t, y) - target).square().mean().backward()
        opt.step()
    assert conv.conv.weight.grad is not None and conv.conv.weight.grad.abs().sum() > 0
    # larger images than trained: the grid comes from the input
    assert model(torch.randn(1, 1, 24, 24), torch.rand(1), torch.tensor([1])).shape == (1, 1, 24, 24)


# ----------------------------------------------------------------------------- neighbourhood attention beside the mixer
def _dense_neighbourhood(mixer, x, rows, cols):
    """The definition with an explicit loop: each token's softmax over the in-frame tokens
    within kernel // 2 rows and columns, plus the bias of the offset."""
    return _dense_spacetime(mixer, x, rows, cols, previous=False)


@pytest.mark.parametrize("rows, cols, kernel", [(3, 5, 3), (4, 4, 5), (2, 7, 5), (1, 1, 3), (7, 10, 5)])
@pytest.mark.parametrize("tiled", [False, True], ids=["one-call", "tiled"])
def test_neighbourhood_attention_matches_its_definition(rows, cols, kernel, tiled):
    from polymixer.models.mixers import NeighbourhoodAttention

    torch.manual_seed(0)
    # tiled: 3x3 query tiles (awkward: they do not divide most grids), forced on small frames
    options = {"tile": 3, "dense_up_to": 0} if tiled else {}
    mixer = NeighbourhoodAttention(12, heads=3, kernel=kernel, **options).double()
    with torch.no_grad():
        mixer.position_bias.normal_()
    x = torch.randn(2, 3 * rows * cols, 12, dtype=torch.float64, requires_grad=True)  # 3 frames
    y = mixer(x, grid=(rows, cols))
    want = _dense_neighbourhood(mixer, x, rows, cols)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, mixer.position_bias], gy)
    ref = torch.autograd.grad(want, [x, mixer.position_bias], gy)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="do not tile"):
        mixer(x, grid=(rows + 1, cols + 1))
    with pytest.raises(ValueError, match="grid"):
        mixer(x)


def test_neighbourhood_attention_is_local_and_translation_equivariant():
    from polymixer.models.mixers import NeighbourhoodAttention

    torch.manual_seed(1)
    mixer = NeighbourhoodAttention(8, heads=2, kernel=3).double()
    x = torch.randn(1, 81, 8, dtype=torch.float64)  # one 9x9 frame
    base = mixer(x, grid=(9, 9))
    x2 = x.clone()
    x2[0, 4 * 9 + 4] += 1  # the centre token
    changed = (mixer(x2, grid=(9, 9)) - base).abs().amax(-1).view(9, 9) > 0
    want = torch.zeros(9, 9, dtype=torch.bool)
    want[3:6, 3:6] = True  # its 3x3 neighbourhood, nothing else
    assert torch.equal(changed, want)
    # away from the edges, shifting the content shifts the output
    shifted = torch.roll(x.view(1, 9, 9, 8), shifts=(1, 2), dims=(1, 2)).reshape(1, 81, 8)
    out = torch.roll(mixer(shifted, grid=(9, 9)).view(9, 9, 8), shifts=(-1, -2), dims=(0, 1))
    torch.testing.assert_close(out[2:6, 2:5], base.view(9, 9, 8)[2:6, 2:5])


def test_neighbourhood_attention_trains_in_an_image_dit_and_takes_larger_images():
    from polymixer.models.mixers import NeighbourhoodAttention

    torch.manual_seed(0)
    model = build_model(dit_config("DiT-T/4", "pom + local-attention", image_size=16, in_channels=1, n_classes=3))
    local = model.blocks[0].mixer.mixers[1]
    assert isinstance(local, NeighbourhoodAttention)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, y = torch.randn(4, 1, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 0])
    target = torch.randn(4, 1, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        (model(x, t, y) - target).square().mean().backward()
        opt.step()
    assert local.position_bias.grad is not None and local.position_bias.grad.abs().sum() > 0
    assert model(torch.randn(1, 1, 24, 24), torch.rand(1), torch.tensor([1])).shape == (1, 1, 24, 24)


@pytest.mark.parametrize("hybrid", ["pom + local-attention", "pom + conv", "attention + pom", "pom + attention",
                                    "pom + spacetime-local"])
def test_init_from_a_single_mixer_starts_a_hybrid_with_the_same_function(hybrid):
    """``--init-from`` a model with one mixer per block into a hybrid: the source's tensors
    become the matching member's, the new members' output starts at zero, and the new
    members still learn (their gradients are not all zero)."""
    from polymixer.models.io import add_mixer_members, load_state_checked

    torch.manual_seed(0)
    first = hybrid.split(" + ")[0]
    kw = dict(image_size=16, in_channels=1, n_classes=3, mlp_conv=3, mlp_ratio=3.0, pom_rotary=2 if first == "pom" else 0)
    source = random_weights(build_model(dit_config("DiT-T/4", first, **kw)), torch.float32)
    target = build_model(dit_config("DiT-T/4", hybrid, **{**kw, "pom_rotary": 2}))
    with pytest.raises(Exception, match="missing"):
        load_state_checked(target, source.state_dict(), "source")
    state, added = add_mixer_members(target, source.state_dict())
    match = hybrid.split(" + ").index(first)
    assert added and all(f".mixer.mixers.{match}." not in name for name in added)
    load_state_checked(target, state, "source")
    x = torch.randn(2, 1, 16, 16)
    t, y = torch.tensor([0.2, 0.7]), torch.tensor([0, 2])
    torch.testing.assert_close(target(x, t, y), source(x, t, y), rtol=1e-5, atol=1e-5)
    target(x, t, y).square().mean().backward()
    new = dict(target.named_parameters())
    # (an image is one frame: the bias of the frame before is the one tensor it never reads)
    assert all(new[name].grad is not None for name in added if name in new and not name.endswith("previous_bias"))
    assert any(new[name].grad.abs().sum() > 0 for name in added if name in new)  # the zeroed projection learns
    assert add_mixer_members(target, target.state_dict())[1] == []  # a hybrid's own weights pass through


def test_init_from_a_mixer_no_member_matches_is_left_to_the_check():
    from polymixer.models.io import add_mixer_members, load_state_checked

    kw = dict(image_size=16, in_channels=1, n_classes=3)
    source = build_model(dit_config("DiT-T/4", "attention", **kw))
    target = build_model(dit_config("DiT-T/4", "pom + conv", **kw))
    state, added = add_mixer_members(target, source.state_dict())
    assert added == [] and state.keys() == source.state_dict().keys()
    with pytest.raises(Exception, match="another architecture"):
        load_state_checked(target, state, "source")


def test_training_a_hybrid_from_a_single_mixer_model_from_the_cli(tmp_path):
    from polymixer.cli import main
    from polymixer.models import save_pretrained

    source = build_model(dit_config("DiT-T/4", "pom", image_size=8, in_channels=1, n_classes=10))
    save_pretrained(source, tmp_path / "source")
    code = main(["train", "--data", "digits", "--image-size", "8", "--preset", "DiT-T/4",
                 "--mixer", "pom + local-attention", "--init-from", str(tmp_path / "source"), "--steps", "2",
                 "--batch-size", "4", "--progress", "false", "--num-threads", "1", "--out", str(tmp_path / "run")])
    assert code in (0, None)
    assert (tmp_path / "run" / "ema_model" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- the frame and the frame before it
def _dense_spacetime(mixer, x, rows, cols, previous=True):
    """The definition with an explicit loop: each token's one softmax over the tokens within
    kernel // 2 rows and columns of its place in its own frame (bias position_bias) and in
    the frame before (bias previous_bias; ``previous=False``: its own frame only, plain
    neighbourhood attention); the first frame reads its own only."""
    B, N, D = x.shape
    H, d, k = mixer.heads, mixer.head_dim, mixer.kernel
    q, key, v = mixer.qkv(x).view(B, N, 3, H, d).unbind(2)
    out = torch.zeros(B, N, H, d, dtype=x.dtype)
    T = rows * cols
    for i in range(N):
        f, r, c = i // T, (i % T) // cols, i % cols
        js, biases = [], []
        for back, table in ((0, mixer.position_bias), (1, getattr(mixer, "previous_bias", None))):
            if f - back < 0 or (back and not previous):
                continue
            for dr in range(-(k // 2), k // 2 + 1):
                for dc in range(-(k // 2), k // 2 + 1):
                    if 0 <= r + dr < rows and 0 <= c + dc < cols:
                        js.append((f - back) * T + (r + dr) * cols + c + dc)
                        biases.append(table[:, (dr + k // 2) * k + dc + k // 2])
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], key[:, js]) / d ** 0.5 + torch.stack(biases, -1)
        out[:, i] = torch.einsum("bhj,bjhd->bhd", scores.softmax(-1), v[:, js])
    return mixer.out_proj(out.reshape(B, N, D))


@pytest.mark.parametrize("rows, cols, kernel", [(3, 5, 3), (4, 4, 5), (1, 1, 3), (7, 10, 5)])
@pytest.mark.parametrize("tiled", [False, True], ids=["one-call", "tiled"])
def test_spacetime_attention_matches_its_definition_and_streams(rows, cols, kernel, tiled):
    from polymixer.models.mixers import PreviousFrame, SpacetimeNeighbourhoodAttention

    torch.manual_seed(0)
    options = {"tile": 3, "dense_up_to": 0} if tiled else {}
    mixer = SpacetimeNeighbourhoodAttention(12, heads=3, kernel=kernel, **options).double()
    with torch.no_grad():
        mixer.position_bias.normal_()
        mixer.previous_bias.normal_()
    T = rows * cols
    x = torch.randn(2, 3 * T, 12, dtype=torch.float64, requires_grad=True)  # 3 frames
    y = mixer(x, grid=(rows, cols), block_size=T)
    want = _dense_spacetime(mixer, x, rows, cols)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    params = [x, mixer.position_bias, mixer.previous_bias, mixer.qkv.weight]
    for a, b in zip(torch.autograd.grad(y, params, gy), torch.autograd.grad(want, params, gy)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert mixer.previous_bias.grad is None
    # streaming, one frame and then two at a time, equals the call on all three
    state = mixer.init_state(2)
    assert isinstance(state, PreviousFrame) and state.nbytes() == 0 and state.state_dict() == {}
    y0, s1 = mixer.step(x[:, :T], state, grid=(rows, cols))
    y12, s3 = mixer.step(x[:, T:], s1, grid=(rows, cols))
    torch.testing.assert_close(torch.cat([y0, y12], 1), y, rtol=1e-12, atol=1e-12)
    assert s1.nbytes() == s3.nbytes() > 0 and state.keys is None  # constant size; the given state is unchanged
    with pytest.raises(ValueError, match="block_size"):
        mixer(x, grid=(rows, cols), block_size=2 * T)
    with pytest.raises(ValueError, match="only block_size"):
        mixer(x, grid=(rows, cols), causal=True)
    with pytest.raises(TypeError, match="PreviousFrame"):
        mixer.step(x[:, :T], None, grid=(rows, cols))


def test_spacetime_attention_reads_the_neighbourhood_one_frame_back_only():
    from polymixer.models.mixers import SpacetimeNeighbourhoodAttention

    torch.manual_seed(1)
    mixer = SpacetimeNeighbourhoodAttention(8, heads=2, kernel=3).double()
    x = torch.randn(1, 4 * 49, 8, dtype=torch.float64)  # four 7x7 frames
    base = mixer(x, grid=(7, 7))
    x2 = x.clone()
    x2[0, 49 + 3 * 7 + 3] += 1  # the centre token of frame 1
    changed = ((mixer(x2, grid=(7, 7)) - base).abs().amax(-1).view(4, 7, 7) > 0)
    want = torch.zeros(4, 7, 7, dtype=torch.bool)
    want[1:3, 2:5, 2:5] = True  # its 3x3 neighbourhood in frame 1 and in frame 2; not frame 0 nor frame 3
    assert torch.equal(changed, want)


def _randomise_previous_bias(model):
    """Non-zero biases for the frame before (zero at start would hide an offset mix-up)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("previous_bias"):
                p.normal_()


@pytest.mark.parametrize("mixer", ["pom + spacetime-local", "spacetime-local, pom"])
def test_spacetime_attention_beside_pom_streams_exactly_and_samples_sequentially_as_jointly(mixer):
    model = _video(mixer, "frame")
    assert model.can_stream() and model.has_constant_state() and model.default_sampling_mode() == "sequential"
    _randomise_previous_bias(model)
    _assert_streams_frame_by_frame(model)
    # one time per clip: frame by frame, a sampler's trajectory equals joint denoising
    model = _video(mixer, "clip")
    _randomise_previous_bias(model)
    for sampler, cfg in (("euler", 2.0), ("heun", 1.5), ("ddim", 3.0)):
        kw = dict(frames=4, steps=3, cfg_scale=cfg, sampler=sampler, seed=3)
        pipeline = SamplingConfig(objective="ddpm") if sampler == "ddim" else SamplingConfig()
        joint_samples = sample_video(model, pipeline, torch.tensor([1, 5]), mode="joint", **kw)
        seq = sample_video(model, pipeline, torch.tensor([1, 5]), mode="sequential", **kw)
        assert (seq - joint_samples).abs().max() < 1e-10, sampler


def _fresh_and_stale(model, frames: int, split: int):
    """A clip of ``frames`` frames (float64, per-frame times) streamed after its first ``split``
    frames: ``(x, t, y, fresh, state, stale)``, where ``fresh`` is the rest from an empty state,
    ``state`` the state after the first frames and ``stale`` the rest read from it."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, frames, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(2, frames, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 7])
    fresh, _ = model.step(x[:, split:], t[:, split:], y, model.init_state(2, dtype=torch.float64))
    _, state = model.step(x[:, :split], t[:, :split], y, model.init_state(2, dtype=torch.float64))
    stale, _ = model.step(x[:, split:], t[:, split:], y, state)
    return x, t, y, fresh, state, stale


def test_a_hybrid_stream_state_resets_like_a_fresh_one():
    """StateCache.reset_ reaches every member of a hybrid (PoM's sums, the frame before, the
    stateless conv): a reset stream continues exactly like one started afresh."""
    model = _video("pom + spacetime-local, pom + conv", "frame")
    _randomise_previous_bias(model)
    x, t, y, fresh, state, stale = _fresh_and_stale(model, 3, 1)
    assert (stale - fresh).abs().max() > 1e-6  # the state did hold frame 0
    state.reset_()
    again, _ = model.step(x[:, 1:], t[:, 1:], y, state)
    assert (again - fresh).abs().max() == 0
    _, state = model.step(x[:, :1], t[:, :1], y, model.init_state(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="all its rows or none"):
        state["0"].reset_(torch.tensor([True, False]))  # a block's StateTuple: PoM could, the frame before cannot


@pytest.mark.parametrize("mixer,window", [("attention", 0), ("attention", 2), ("pom + attention", 0)])
def test_an_attention_stream_state_resets_like_a_fresh_one(mixer, window):
    """KVCache.reset_ (full or rolling cache, alone or in a hybrid): a reset stream continues
    exactly like a fresh one; forgetting some rows only is refused with a clear error."""
    model = _video(mixer, "frame", attention_window=window)
    x, t, y, fresh, state, stale = _fresh_and_stale(model, 4, 3)
    assert (stale - fresh).abs().max() > 1e-6
    with pytest.raises(ValueError, match="all its rows or none"):
        next(iter(state.states.values())).reset_(torch.tensor([True, False]))
    assert torch.equal(model.step(x[:, 3:], t[:, 3:], y, state)[0], stale)  # the refused reset changed nothing
    state.reset_()
    assert state.nbytes() == sum(s.nbytes() for s in model.init_state(2, dtype=torch.float64).states.values())
    again, _ = model.step(x[:, 3:], t[:, 3:], y, state)
    assert (again - fresh).abs().max() == 0


@pytest.mark.parametrize("mixer,kw", [("pom + spacetime-local", {}), ("pom + conv, frame-local pom", {}),
                                      ("attention", {"attention_window": 2}), ("pom + attention", {}),
                                      ("pom", {"context_frames": 2, "pom_frame_memory": "gated-decay"}),
                                      ("pom", {"pom_frame_memory": "window:2"})])
def test_a_stream_state_saves_and_loads_for_every_kind_of_state(mixer, kw):
    """StateCache.state_dict -> torch.save/load -> from_state_dict(like=model.init_state(B)):
    a stream continues from the loaded state exactly as from the original, for hybrid blocks,
    rolling key-value caches, the frame before and a video model's last inputs."""
    import io

    from polymixer.nn.state import StateCache

    torch.manual_seed(0)
    model = random_weights(VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2,
                                                   heads=2, mlp_ratio=2.0, frames=4, mixer=mixer, noise_levels="frame",
                                                   n_classes=10, **kw)), torch.float64)
    _randomise_previous_bias(model)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(2, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 7])
    _, state = model.step(x[:, :3], t[:, :3], y, model.init_state(2, dtype=torch.float64))
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    flat = torch.load(buf, weights_only=True)
    loaded = StateCache.from_state_dict(flat, like=model.init_state(2, dtype=torch.float64))
    assert loaded.nbytes() == state.nbytes()
    expected, _ = model.step(x[:, 3:], t[:, 3:], y, state)
    again, _ = model.step(x[:, 3:], t[:, 3:], y, loaded)
    assert torch.equal(again, expected)
    if mixer != "pom" or "context_frames" in kw:  # without like: a clear error, here or at the next step
        with pytest.raises(ValueError, match="like=model.init_state|state: expected"):
            model.step(x[:, 3:], t[:, 3:], y, StateCache.from_state_dict(flat))
    with pytest.raises(ValueError, match="not in the given cache"):
        StateCache.from_state_dict({**flat, "99.total": torch.zeros(1)}, like=model.init_state(2))

"""Cross-frame memory of PoM (docs/design.md, section 8; polymixer/ops/frame_memory.py):
"decay", "gated-decay" and "window:W" against a dense oracle with an explicit weights
matrix over tokens (outputs and gradients, float64, awkward sizes, padding, rotary
positions), streaming equals the parallel form with a constant-size state, the limits
(W = 1 is frame-local mixing, γ -> 1 is the plain mean), the video DiT (frame-by-frame
step and sequential sampling equal the joint forms), the execution plan and bad input."""

import dataclasses
import json

import pytest
import torch

from polymixer import PolynomialMixer
from polymixer.models import DiT, DiTConfig, VideoDiT, VideoDiTConfig
from polymixer.models.blocks import token_coordinates
from polymixer.nn import FrameMemoryState, MixerState, StateCache
from polymixer.ops.frame_memory import parse_frame_memory
from polymixer.pipeline import SamplingConfig
from polymixer.video import sample_video

from helpers import random_weights

f64 = torch.float64
OPTIONS = ["decay", "gated-decay", "window:1", "window:2", "window:9"]


def mixer_with(frame_memory, dim=12, seed=0, **kw):
    """A float64 mixer whose decay parameters are random (not their start), so that every
    channel decays differently and the gate really reads the frame."""
    torch.manual_seed(seed)
    mixer = PolynomialMixer(dim, frame_memory=frame_memory, **kw).to(f64)
    with torch.no_grad():
        if hasattr(mixer, "decay_logit"):
            mixer.decay_logit.copy_(torch.randn(mixer.state_width, dtype=f64) * 1.5)
        if hasattr(mixer, "decay_weight"):
            mixer.decay_weight.copy_(torch.randn(mixer.state_width, dim, dtype=f64) * 0.5)
    return mixer


def grads(out, inputs, seed=3):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, upstream, allow_unused=True)


# ------------------------------------------------------------------ the oracle
@pytest.mark.parametrize("frame_memory", OPTIONS)
@pytest.mark.parametrize("variant,tokens,padded", [("product", 35, False), ("power", 33, True)])
def test_parallel_equals_the_dense_weights_oracle_outputs_and_gradients(frame_memory, variant, tokens, padded):
    # 5 frames of 7 tokens (or 4 and a short one of 5), D = 12, random upstream gradients
    mixer = mixer_with(frame_memory, variant=variant, degree=3 if variant == "power" else 2, expand=1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, tokens, 12, generator=g, dtype=f64, requires_grad=True)
    kw = {"block_size": 7}
    if padded:
        mask = torch.rand(3, tokens, generator=g) > 0.3
        mask[1, 7:14] = False  # a frame with no real token
        mask[2, :] = False  # a row with none at all
        kw["context_mask"] = mask
    params = [p for p in mixer.parameters()]
    fast = mixer(x, **kw)
    ref = mixer.forward_reference(x, **kw)
    assert torch.isfinite(fast).all()
    assert (fast - ref).abs().max() < 1e-12
    names = ["x"] + [name for name, _ in mixer.named_parameters()]
    for name, a, b in zip(names, grads(fast, [x] + params), grads(ref, [x] + params)):
        assert (a - b).abs().max() < 1e-11, name
        if name.startswith("decay"):  # the decay is learned
            assert a.abs().max() > 1e-6


@pytest.mark.parametrize("frame_memory", ["decay", "gated-decay", "window:2"])
def test_rotary_positions_with_a_frame_memory_equal_the_oracle(frame_memory):
    mixer = mixer_with(frame_memory, dim=8, rotary_axes=3, heads=4)
    x = torch.randn(2, 4 * 6, 8, dtype=f64, requires_grad=True)
    positions = token_coordinates(2, 3, frames=4)
    fast = mixer(x, block_size=6, positions=positions)
    ref = mixer.forward_reference(x, block_size=6, positions=positions)
    assert (fast - ref).abs().max() < 1e-12
    for a, b in zip(grads(fast, [x, mixer.decay_weight if frame_memory == "gated-decay" else x]),
                    grads(ref, [x, mixer.decay_weight if frame_memory == "gated-decay" else x])):
        assert (a - b).abs().max() < 1e-11
    # streaming with the frames' positions
    state, outs = mixer.init_state(2), []
    for f in range(4):
        y, state = mixer.step(x[:, 6 * f:6 * f + 6], state, positions=positions[6 * f:6 * f + 6])
        outs.append(y)
    assert (torch.cat(outs, 1) - fast).abs().max() < 1e-12


@pytest.mark.parametrize("frame_memory", ["decay", "gated-decay", "window:2"])
def test_unequal_frames_and_float32(frame_memory):
    mixer = mixer_with(frame_memory)
    x = torch.randn(2, 19, 12, dtype=f64)
    lengths = [3, 9, 1, 6]
    assert (mixer(x, block_lengths=lengths) - mixer.forward_reference(x, block_lengths=lengths)).abs().max() < 1e-12
    # float32: a float32 state, stream == parallel to rounding
    mixer, x = mixer.float(), x.float()
    parallel = mixer(x[:, :18], block_size=6)
    state, outs = mixer.init_state(2), []
    for f in range(3):
        y, state = mixer.step(x[:, 6 * f:6 * f + 6], state)
        outs.append(y)
    assert state.total.dtype == torch.float32
    torch.testing.assert_close(torch.cat(outs, 1), parallel, rtol=1e-5, atol=1e-6)


def test_the_options_compute_what_they_say():
    # the weights by hand for two frames of one token each: F = 2 * 1 * 1 channels
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, dtype=f64)
    h = PolynomialMixer(4, expand=1, frame_memory="decay").to(f64)
    feats = h.features(x)[0]  # (3, F)
    gamma = torch.sigmoid(h.decay_logit.detach())
    assert torch.allclose(gamma, torch.full_like(gamma, 0.9))  # the start
    H_last = (gamma ** 2 * feats[0] + gamma * feats[1] + feats[2]) / (gamma ** 2 + gamma + 1)
    expected = h.read_out(x[:, 2:], H_last.view(1, 1, -1))
    assert (h(x, block_size=1)[:, 2:] - expected).abs().max() < 1e-14
    w = PolynomialMixer(4, expand=1, frame_memory="window:2").to(f64)
    w.load_state_dict(h.state_dict(), strict=False)
    expected = w.read_out(x[:, 2:], ((feats[1] + feats[2]) / 2).view(1, 1, -1))
    assert (w(x, block_size=1)[:, 2:] - expected).abs().max() < 1e-14


def test_gated_decay_reads_the_new_frame():
    mixer = mixer_with("gated-decay")
    x = torch.randn(1, 21, 12, dtype=f64)
    y = mixer(x, block_size=7)
    changed = x.clone()
    changed[:, 14:] += 1.0  # the last frame's content: another decay of frames 0 and 1
    feats = mixer.features(x)
    assert torch.equal(mixer.features(changed)[:, :14], feats[:, :14])
    # its state differs also through the decay, not only through its own features
    state = mixer.init_state(1)
    _, state = mixer.step(x[:, :7], state)
    _, state = mixer.step(x[:, 7:14], state)
    _, a = mixer.step(x[:, 14:], state)
    _, b = mixer.step(changed[:, 14:], state)
    past_a = a.total - mixer.features(x[:, 14:]).sum(1)
    past_b = b.total - mixer.features(changed[:, 14:]).sum(1)
    assert (past_a - past_b).abs().max() > 1e-3
    assert y.shape == x.shape


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("frame_memory", OPTIONS)
def test_streaming_frame_by_frame_equals_parallel_with_a_constant_state(frame_memory):
    mixer = mixer_with(frame_memory)
    g = torch.Generator().manual_seed(2)
    T, frames = 7, 9
    x = torch.randn(2, frames * T, 12, generator=g, dtype=f64)
    mask = torch.rand(2, frames * T, generator=g) > 0.2
    parallel = mixer(x, block_size=T, context_mask=mask)
    state, outs, sizes = mixer.init_state(2), [], {}
    assert isinstance(state, FrameMemoryState) and state.total.dtype == f64
    for f in range(frames):
        y, new = mixer.step(x[:, f * T:(f + 1) * T], state, context_mask=mask[:, f * T:(f + 1) * T])
        assert new is not state and type(new) is FrameMemoryState
        state = new
        outs.append(y)
        sizes[f + 1] = state.nbytes()
    assert (torch.cat(outs, 1) - parallel).abs().max() < 1e-12
    assert sizes[3] == sizes[9] == sizes[1]
    # the parallel form continues a state: frames 4.. after a streamed prefix of 4
    state = mixer.init_state(2)
    for f in range(4):
        _, state = mixer.step(x[:, f * T:(f + 1) * T], state, context_mask=mask[:, f * T:(f + 1) * T])
    rest = mixer(x[:, 4 * T:], block_size=T, context_mask=mask[:, 4 * T:], state=state)
    assert (rest - parallel[:, 4 * T:]).abs().max() < 1e-12
    # a float32 mixer keeps a float32 state; state dicts round-trip through a StateCache
    cache = StateCache({"a": state})
    back = StateCache.from_state_dict(cache.state_dict())["a"]
    assert isinstance(back, FrameMemoryState) and torch.equal(back.total, state.total)
    assert mixer.float().init_state(1).total.dtype == torch.float32


def test_window_of_one_frame_is_frame_local_mixing():
    mixer = mixer_with("window:1")
    plain = PolynomialMixer(12).to(f64)
    plain.load_state_dict(mixer.state_dict())
    x = torch.randn(2, 35, 12, dtype=f64)
    local = plain(x.reshape(10, 7, 12)).reshape(2, 35, 12)
    assert (mixer(x, block_size=7) - local).abs().max() < 1e-13


def test_decay_close_to_one_approaches_the_mean():
    mixer = PolynomialMixer(12, frame_memory="decay").to(f64)
    plain = PolynomialMixer(12).to(f64)
    plain.load_state_dict(mixer.state_dict(), strict=False)
    x = torch.randn(2, 35, 12, dtype=f64)
    mean = plain(x, block_size=7)
    assert (mixer(x, block_size=7) - mean).abs().max() > 1e-4  # γ = 0.9 at the start: another function
    with torch.no_grad():
        mixer.decay_logit.fill_(40.0)  # γ = 1 - 4e-18: 1 in float64
    assert (mixer(x, block_size=7) - mean).abs().max() < 1e-12
    with torch.no_grad():
        mixer.decay_logit.fill_(12.0)  # γ = 1 - 6e-6
    assert (mixer(x, block_size=7) - mean).abs().max() < 1e-4


def test_full_mode_is_one_frame():
    # every option reads one frame as its plain mean (a frame-local call, a stream's step)
    x = torch.randn(2, 9, 12, dtype=f64)
    for option in OPTIONS:
        mixer = mixer_with(option)
        plain = PolynomialMixer(12).to(f64)
        plain.load_state_dict(mixer.state_dict(), strict=False)
        assert (mixer(x) - plain(x)).abs().max() < 1e-13


def test_bf16_autocast_runs():
    mixer = PolynomialMixer(16, frame_memory="gated-decay")
    x = torch.randn(2, 24, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x, block_size=6)
        y.float().sum().backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(mixer.decay_weight.grad).all()


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()  # start and end clean (the compiled forward is shared between tests)
    x = torch.randn(2, 36, 16)
    for option in ("gated-decay", "window:2"):
        mixer = PolynomialMixer(16, frame_memory=option)
        compiled = torch.compile(mixer, fullgraph=True)
        torch.testing.assert_close(compiled(x, block_size=9), mixer(x, block_size=9), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------------ plan and errors
def test_plan_is_autograd_with_a_reason():
    x = torch.randn(2, 16, 8)
    for implementation in ("fused", "lean", "autograd"):
        for option in ("decay", "window:3"):
            mixer = PolynomialMixer(8, implementation=implementation, frame_memory=option)
            plan = mixer.execution_plan(x, block_size=4)
            assert plan.form == "autograd" and f"frame_memory={option!r}" in plan.reason
            assert plan.aggregation_backend == "torch"
    assert PolynomialMixer(8).execution_plan(x, block_size=4).form == "fused"
    assert "frame_memory" in repr(PolynomialMixer(8, frame_memory="window:3"))
    assert "frame_memory" not in repr(PolynomialMixer(8))


def test_bad_input_errors():
    for bad in ("window:0", "window:x", "window:", "window:-1", "decay:2", "Mean", "", 3, None):
        with pytest.raises(ValueError, match="frame_memory"):
            PolynomialMixer(8, frame_memory=bad)
    assert str(parse_frame_memory("window:12")) == "window:12"
    mixer = PolynomialMixer(8, frame_memory="decay")
    x = torch.randn(2, 6, 8)
    for kw in ({"causal": True}, {"cu_seqlens": torch.tensor([0, 2, 6])}, {"mask": torch.ones(6, 6, dtype=bool)}):
        with pytest.raises(ValueError, match="frame_memory='decay' needs frames"):
            mixer(x, **kw)
    mixer(x, block_lengths=[2, 4])  # unequal frames are frames too
    with pytest.raises(TypeError, match="FrameMemoryState"):
        mixer.step(x, MixerState.zeros(2, mixer.state_width))
    with pytest.raises(TypeError, match="MixerState"):
        PolynomialMixer(8).step(x, mixer.init_state(2))
    with pytest.raises(ValueError, match="window"):
        PolynomialMixer(8, frame_memory="window:2").step(x, PolynomialMixer(8, frame_memory="window:3").init_state(2))
    with pytest.raises(ValueError, match="window"):
        PolynomialMixer(8, frame_memory="window:2").step(x, mixer.init_state(2))
    with pytest.raises(ValueError, match="pom_frame_memory"):
        VideoDiTConfig(pom_frame_memory="window:none")
    with pytest.raises(ValueError, match="pom_frame_memory"):
        DiT(DiTConfig(image_size=8, width=32, depth=1, heads=2, pom_frame_memory="decay"))


# ------------------------------------------------------------------ models


def tiny_video(frame_memory, mixer="pom", dtype=f64, **kw):
    base = dict(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, mlp_ratio=2.0, frames=4,
                mixer=mixer, n_classes=10, pom_frame_memory=frame_memory)
    base.update(kw)
    torch.manual_seed(0)
    return random_weights(VideoDiT(VideoDiTConfig(**base)), dtype)


@pytest.mark.parametrize("frame_memory", ["decay", "gated-decay", "window:2"])
@pytest.mark.parametrize("mixer,noise_levels", [("pom", "clip"), ("frame-local pom, pom", "frame"),
                                                ("pom + frame-local attention", "clip")])
def test_video_streaming_frames_equals_joint_float64(frame_memory, mixer, noise_levels):
    model = tiny_video(frame_memory, mixer, noise_levels=noise_levels, depth=3)
    for i, block in enumerate(model.blocks):  # frame-local mixers keep the mean
        mixers = block.mixer.mixers if hasattr(block.mixer, "mixers") else [block.mixer]
        locals_ = block.mixer.frame_local if hasattr(block.mixer, "mixers") else [block.layer.frame_local]
        for m, local in zip(mixers, locals_):
            if isinstance(m, PolynomialMixer):
                assert str(m.frame_memory) == ("mean" if local else frame_memory)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=f64)
    t = torch.rand((2, 5) if noise_levels == "frame" else (2,), generator=g, dtype=f64)
    y = torch.tensor([1, 3])
    joint = model(x, t, y)
    state, outs, sizes = model.init_state(2, dtype=f64), [], []
    for f in range(5):
        out, state = model.step(x[:, f:f + 1], t[:, f:f + 1] if t.dim() == 2 else t, y, state, frame_offset=f)
        outs.append(out)
        sizes.append(state.nbytes())
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    assert len(set(sizes)) == 1
    # the option changes the function (against the same weights with the mean)
    plain = VideoDiT(dataclasses.replace(model.config, pom_frame_memory="mean")).to(f64).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert (plain(x, t, y) - joint)[:, 1:].abs().max() > 1e-6


def test_video_temporal_patch_streaming():
    model = tiny_video("gated-decay", temporal_patch=2, frames=4)
    x = torch.randn(2, 6, 1, 8, 8, dtype=f64)
    t, y = torch.rand(2, dtype=f64), torch.tensor([0, 1])
    joint = model(x, t, y)
    state, outs = model.init_state(2, dtype=f64), []
    for g in range(3):
        out, state = model.step(x[:, 2 * g:2 * g + 2], t, y, state, frame_offset=2 * g)
        outs.append(out)
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12


def test_video_state_size_is_constant_over_frames():
    model = tiny_video("window:3")
    x, t, y = torch.randn(1, 9, 1, 8, 8, dtype=f64), torch.rand(1, dtype=f64), torch.tensor([1])
    _, after3 = model.step(x[:, :3], t, y, model.init_state(1, dtype=f64))
    _, after9 = model.step(x, t, y, model.init_state(1, dtype=f64))
    assert after3.nbytes() == after9.nbytes()


class JointHistory(torch.nn.Module):
    """A video model whose "stream" keeps every frame seen and runs the parallel forward on
    all of them: the joint form of a per-frame-noise model's sequential sampling (which
    feeds finished clean frames, so its "joint" sampling mode is another function)."""

    kind = "video"

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def init_state(self, batch_size, device=None, dtype=None):
        return []

    def step(self, x, t, y, state, *, frame_offset=0):
        t = t.reshape(x.shape[0], -1).expand(x.shape[0], x.shape[1])  # (B,) or (B, F): one time per frame
        xs = torch.cat([h[0] for h in state] + [x], 1)
        ts = torch.cat([h[1] for h in state] + [t], 1)
        out = self.inner(xs, ts, y, frame_offset=frame_offset - len(state))
        return out[:, -x.shape[1]:], state + [(x, t)]


@pytest.mark.parametrize("frame_memory", ["decay", "gated-decay", "window:2"])
@pytest.mark.parametrize("sampler,objective", [("euler", "flow"), ("heun", "flow"), ("ddim", "ddpm")])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_video_sequential_sampling_equals_joint_float64(frame_memory, sampler, objective, cfg, noise_levels):
    model = tiny_video(frame_memory, noise_levels=noise_levels)
    pipe = SamplingConfig(objective=objective)
    kw = dict(frames=4, steps=2, cfg_scale=cfg, sampler=sampler, seed=1)
    seq = sample_video(model, pipe, torch.tensor([1, 2]), mode="sequential", **kw)
    if noise_levels == "clip":  # shared noise: frame by frame equals denoising the clip jointly
        joint = sample_video(model, pipe, torch.tensor([1, 2]), mode="joint", **kw)
    else:  # per-frame noise: equals the parallel forward over the clean frames so far and the new one
        joint = sample_video(JointHistory(model), pipe, torch.tensor([1, 2]), mode="sequential", **kw)
    assert joint.shape == (2, 4, 1, 8, 8)
    assert (seq - joint).abs().max() < 1e-10


def test_model_saves_and_loads(tmp_path):
    model = tiny_video("gated-decay", dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    loaded = VideoDiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.pom_frame_memory == "gated-decay"
    x, t, y = torch.randn(1, 3, 1, 8, 8), torch.rand(1), torch.tensor([4])
    assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_configs_without_the_field_load_with_the_mean():
    config = VideoDiTConfig(image_size=8, width=32, depth=1, heads=2)
    blob = json.loads(json.dumps(config.to_dict()))
    fields = blob.get("config", blob)
    assert fields.pop("pom_frame_memory") == "mean"
    loaded = VideoDiTConfig.from_dict(blob)
    assert loaded.pom_frame_memory == "mean"
    assert not any("decay" in name for name in VideoDiT(loaded).state_dict())


def test_a_new_model_starts_with_the_decay_at_0_9():
    # the DiT initialisation (Xavier linears) leaves the decay parameters as the mixer made them
    model = VideoDiT(VideoDiTConfig(image_size=8, width=32, depth=2, heads=2, pom_frame_memory="gated-decay"))
    for block in model.blocks:
        assert torch.allclose(torch.sigmoid(block.mixer.decay_logit), torch.tensor(0.9))
        assert torch.equal(block.mixer.decay_weight, torch.zeros_like(block.mixer.decay_weight))


def test_weights_of_a_mean_model_start_a_decay_model():
    from polymixer.models.io import add_frame_memory, load_state_checked

    source = VideoDiT(VideoDiTConfig(image_size=8, width=32, depth=2, heads=2, mixer="frame-local pom, pom"))
    target = VideoDiT(dataclasses.replace(source.config, pom_frame_memory="gated-decay"))
    state, added = add_frame_memory(target, source.state_dict())
    assert added == ["blocks.1.mixer.decay_logit", "blocks.1.mixer.decay_weight"]  # not the frame-local block
    load_state_checked(target, state, "source")
    assert torch.equal(target.blocks[0].mixer.feature_proj.weight, source.blocks[0].mixer.feature_proj.weight)
    assert add_frame_memory(target, target.state_dict())[1] == []


def test_training_a_decay_video_model_from_an_image_model(tmp_path):
    pytest.importorskip("mlxtend")
    from polymixer.train import TrainConfig, train

    common = dict(preset="DiT-T/4", depth=1, width=32, heads=2, batch_size=4, sample_every=0, progress=False,
                  tensorboard=False, num_threads=1)
    train(TrainConfig(data="digits", image_size=16, steps=1, checkpoint_every=1, out=str(tmp_path / "img"), **common))
    result = train(TrainConfig(data="moving-digits", image_size=16, frames=3, steps=2, checkpoint_every=2,
                               pom_frame_memory="gated-decay", init_from=str(tmp_path / "img" / "ema_model"),
                               out=str(tmp_path / "v"), **common))
    model = result["model"]
    assert model.config.pom_frame_memory == "gated-decay"
    assert model.blocks[0].mixer.decay_weight.abs().max() > 0  # trained from its zero start
    loaded = VideoDiT.from_pretrained(tmp_path / "v" / "ema_model")
    assert str(loaded.blocks[0].mixer.frame_memory) == "gated-decay"


def test_benchmark_script_runs_at_toy_size():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_frame_memory.py"
    spec = importlib.util.spec_from_file_location("bench_frame_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--batch", "1", "--frames", "3", "--tokens", "5", "--dim", "8", "--repeats", "1",
                        "--warmup", "0"])
    assert [r["option"].split()[0] for r in rows] == ["mean", "mean", "decay", "gated-decay", "window:2", "window:4"]

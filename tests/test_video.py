"""Video DiT: frame causality, streaming equals the parallel forward, sequential sampling
equals joint sampling (shared noise), continuation (per-frame noise), bad input."""

import pytest
import torch

from polymixer.models import VideoDiT, VideoDiTConfig
from polymixer.models.mixers import legacy_frame_local_pattern
from polymixer.pipeline import SamplingConfig
from polymixer.video import sample_video

from helpers import random_weights


def tiny_video(mixer="pom", noise_levels="clip", dtype=torch.float32, **kw):
    base = dict(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, mlp_ratio=2.0, frames=4,
                mixer=mixer, noise_levels=noise_levels, n_classes=10)
    base.update(kw)
    if "frame_local_every" in base:  # blocks 0, k, 2k, ... frame-local
        base["mixer"] = legacy_frame_local_pattern(mixer, base.pop("frame_local_every"))
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(**base))
    return random_weights(model, dtype)


def clip_inputs(B=2, F=5, dtype=torch.float32, per_frame=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, F, 1, 8, 8, generator=g).to(dtype)
    t = torch.rand((B, F) if per_frame else (B,), generator=g).to(dtype)
    return x, t, torch.tensor([1, 3, 5, 7][:B])


@pytest.mark.parametrize("mixer", ["pom", "attention"])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_frames_never_see_later_frames(mixer, noise_levels):
    model = tiny_video(mixer, noise_levels)
    x, t, y = clip_inputs(per_frame=noise_levels == "frame")
    out = model(x, t, y)
    assert out.shape == x.shape
    x2 = x.clone()
    x2[:, 3] += 1.0
    out2 = model(x2, t, y)
    assert torch.equal(out2[:, :3], out[:, :3])
    assert (out2[:, 3:] - out[:, 3:]).abs().max() > 1e-3  # and the change does reach frames >= 3


def test_temporal_patch_and_other_sizes():
    model = tiny_video(temporal_patch=2, frames=4)
    x = torch.randn(2, 6, 1, 6, 10)
    out = model(x, torch.rand(2), torch.tensor([0, 1]))
    assert out.shape == x.shape
    x2 = x.clone()
    x2[:, 4] += 1  # group 2 (frames 4, 5) changes; groups 0 and 1 do not see it
    assert torch.equal(model(x2, torch.rand(2).fill_(0.5), torch.tensor([0, 1]))[:, :4],
                       model(x, torch.rand(2).fill_(0.5), torch.tensor([0, 1]))[:, :4])


@pytest.mark.parametrize("mixer", ["pom", "attention"])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_frame_local_blocks_mix_inside_each_frame(mixer, noise_levels):
    x, t, y = clip_inputs(F=4, per_frame=noise_levels == "frame")
    # every block spatial: each frame is the model on that frame alone (at its position)
    model = tiny_video(mixer, noise_levels, frame_local_every=1)
    assert model.frame_local_blocks() == {0, 1}
    out = model(x, t, y)
    for f in range(4):
        alone = model(x[:, f:f + 1], t[:, f:f + 1] if t.dim() == 2 else t, y, frame_offset=f)
        assert (alone - out[:, f:f + 1]).abs().max() < 1e-5
    # alternating (blocks 0 and 2 spatial, 1 block-causal): still causal, and earlier frames do reach
    model = tiny_video(mixer, noise_levels, frame_local_every=2, depth=3)
    assert model.frame_local_blocks() == {0, 2}
    out = model(x, t, y)
    x2 = x.clone()
    x2[:, 1] += 1.0
    out2 = model(x2, t, y)
    assert torch.equal(out2[:, :1], out[:, :1])
    assert (out2[:, 2:] - out[:, 2:]).abs().max() > 1e-3
    # and a spatial block differs from the block-causal one (the option does something)
    causal = tiny_video(mixer, noise_levels, depth=3)
    assert (causal(x, t, y) - out).abs().max() > 1e-3


@pytest.mark.parametrize("mixer", ["pom", "attention"])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
@pytest.mark.parametrize("frame_local_every", [0, 2])
def test_streaming_frames_equals_the_parallel_forward_float64(mixer, noise_levels, frame_local_every):
    model = tiny_video(mixer, noise_levels=noise_levels, dtype=torch.float64, frame_local_every=frame_local_every,
                       depth=3)
    x, t, y = clip_inputs(F=7, dtype=torch.float64, per_frame=noise_levels == "frame")
    joint = model(x, t, y)
    state = model.init_state(2, dtype=torch.float64)
    empty = state
    outs = []
    for f in range(7):
        tf = t[:, f:f + 1] if t.dim() == 2 else t
        out, state = model.step(x[:, f:f + 1], tf, y, state, frame_offset=f)
        outs.append(out)
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    # a spatial block has no state (no memory), the others do
    assert set(state) == {str(i) for i in range(3) if i not in model.frame_local_blocks()}
    if mixer == "pom":
        assert state["1"].total.dtype == torch.float64
        assert torch.equal(state["1"].count, torch.full((2,), 7 * 16.0, dtype=torch.float64))
        assert torch.equal(empty["1"].count, torch.zeros(2, dtype=torch.float64))  # the step did not change it
    else:  # a key-value cache of every token seen
        assert state["1"].length == 7 * 16 and empty["1"].length == 0
    # several frames in one step after a prefix of 3 frames: the block-causal rest
    _, prefix = model.step(x[:, :3], t[:, :3] if t.dim() == 2 else t, y, model.init_state(2, dtype=torch.float64))
    rest, _ = model.step(x[:, 3:], t[:, 3:] if t.dim() == 2 else t, y, prefix, frame_offset=3)
    assert (rest - joint[:, 3:]).abs().max() < 1e-12


def test_stream_capabilities():
    pom, attention = tiny_video("pom"), tiny_video("attention")
    assert pom.can_stream() and pom.has_constant_state() and pom.default_sampling_mode() == "sequential"
    assert attention.can_stream() and not attention.has_constant_state()
    assert attention.default_sampling_mode() == "joint"


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_attention_samples_frame_by_frame_with_a_kv_cache(sampler):
    model = tiny_video("attention", dtype=torch.float64)
    kw = dict(frames=4, steps=3, cfg_scale=2.0, sampler=sampler, seed=1)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10


@pytest.mark.parametrize("frames", [1, 2, 7])
@pytest.mark.parametrize("sampler,objective", [("euler", "flow"), ("heun", "flow"), ("ddim", "ddpm")])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_sequential_sampling_equals_joint_sampling_float64(frames, sampler, objective, cfg):
    model = tiny_video(dtype=torch.float64)
    pipe = SamplingConfig(objective=objective)
    y = torch.tensor([2, 9])
    kw = dict(frames=frames, steps=3, cfg_scale=cfg, sampler=sampler, seed=5)
    joint = sample_video(model, pipe, y, mode="joint", **kw)
    seq = sample_video(model, pipe, y, mode="sequential", **kw)
    assert joint.shape == (2, frames, 1, 8, 8)
    assert (seq - joint).abs().max() < 1e-10
    # and the result depends on the seed (not a trivial equality)
    other = sample_video(model, pipe, y, mode="sequential", **{**kw, "seed": 6})
    assert (other - seq).abs().max() > 1e-3


def test_sequential_sampling_with_spatial_blocks_equals_joint():
    model = tiny_video(dtype=torch.float64, frame_local_every=2, depth=3)
    kw = dict(frames=5, steps=3, cfg_scale=2.0, seed=2)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10


@pytest.mark.parametrize("frames", [1, 7])
def test_sequential_sampling_equals_joint_sampling_float32(frames):
    model = tiny_video(temporal_patch=1)
    pipe = SamplingConfig()
    kw = dict(frames=frames, steps=4, cfg_scale=2.0, seed=0)
    joint = sample_video(model, pipe, torch.tensor([0, 4]), mode="joint", **kw)
    seq = sample_video(model, pipe, torch.tensor([0, 4]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-4


def test_sequential_sampling_with_temporal_patches_equals_joint():
    model = tiny_video(dtype=torch.float64, temporal_patch=2)
    kw = dict(frames=6, steps=3, cfg_scale=1.5, seed=1)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10


@pytest.mark.parametrize("mode", ["sequential", "joint"])
@pytest.mark.parametrize("temporal_patch", [1, 2])
def test_given_noise_is_the_seeded_noise_and_batches_do_not_matter(mode, temporal_patch):
    from polymixer.video import video_noise

    model = tiny_video(dtype=torch.float64, temporal_patch=temporal_patch)
    y = torch.tensor([1, 5, 7])
    kw = dict(frames=4, mode=mode, steps=2, cfg_scale=2.0)
    seeded = sample_video(model, SamplingConfig(), y, seed=4, **kw)
    noise = video_noise(3, 4, (1, 8, 8), seed=4)
    assert (sample_video(model, SamplingConfig(), y, noise=noise, seed=99, **kw) - seeded).abs().max() < 1e-12
    # clip by clip, each with its row of the noise: the same clips as all at once
    one_by_one = torch.cat([sample_video(model, SamplingConfig(), y[i:i + 1], noise=noise[i:i + 1], **kw)
                            for i in range(3)])
    assert (one_by_one - seeded).abs().max() < 1e-10
    with pytest.raises(ValueError, match=r"noise: expected \(3, 4, 1, 8, 8\)"):
        sample_video(model, SamplingConfig(), y, noise=noise[:, :3], **kw)


def test_sequential_sampling_makes_more_frames_than_trained_and_keeps_the_state_size():
    model = tiny_video()  # trained length 4
    clip = sample_video(model, SamplingConfig(), torch.tensor([3]), frames=12, steps=2, seed=0)
    assert clip.shape == (1, 12, 1, 8, 8) and torch.isfinite(clip).all()
    assert clip.min() >= -1 and clip.max() <= 1


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_per_frame_model_continues_a_clip(cfg):
    model = tiny_video(noise_levels="frame", dtype=torch.float64)
    y = torch.tensor([4, 6])
    given = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    kw = dict(frames=6, steps=3, cfg_scale=cfg, seed=2)
    out = sample_video(model, SamplingConfig(), y, given_frames=given, **kw)
    assert out.shape == (2, 6, 1, 8, 8)
    assert torch.equal(out[:, :3], given.float())
    # the generated frames depend on the given ones ...
    other = sample_video(model, SamplingConfig(), y, given_frames=given.flip(1), **kw)
    assert (other[:, 3:] - out[:, 3:]).abs().max() > 1e-4
    # ... exactly as a generation whose first frames came out as the given ones: frame 3
    # denoised by hand against a parallel forward over [given, frame 3] at t = (0, 0, 0, t)
    from polymixer.diffusion import euler
    from polymixer.video import video_noise

    noise = video_noise(2, 6, (1, 8, 8), seed=2).double()[:, 3:4]

    def frame3(x, t, labels):
        ts = torch.cat([torch.zeros(x.shape[0], 3, dtype=t.dtype), t[:, None]], dim=1)
        ctx = given if x.shape[0] == 2 else torch.cat([given, given])
        return model(torch.cat([ctx, x], dim=1), ts, labels)[:, 3:]

    from polymixer.diffusion import classifier_free_guidance

    ref = euler(classifier_free_guidance(frame3, cfg), noise, model.condition(y), steps=3).clamp(-1, 1)
    assert (ref.float() - out[:, 3:4]).abs().max() < 1e-6


@pytest.mark.parametrize("cfg", [1.0, 2.0])
@pytest.mark.parametrize("weight", [0.0, 2.5])
def test_history_guidance_is_guidance_by_the_finished_frames(cfg, weight):
    # frame 3 after 3 given frames, denoised by hand: v_alone + w (v - v_alone), v_alone the
    # frame as a clip of its own (the first frame), v reading the given frames (parallel forward)
    from polymixer.diffusion import classifier_free_guidance, euler
    from polymixer.video import video_noise

    model = tiny_video(noise_levels="frame", dtype=torch.float64)
    y = torch.tensor([4, 6])
    given = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    kw = dict(frames=5, steps=3, cfg_scale=cfg, seed=2, given_frames=given)
    out = sample_video(model, SamplingConfig(), y, history_guidance=weight, **kw)
    noise = video_noise(2, 5, (1, 8, 8), seed=2).double()[:, 3:4]

    def frame3(x, t, labels):
        ts = torch.cat([torch.zeros(x.shape[0], 3, dtype=t.dtype), t[:, None]], dim=1)
        ctx = given if x.shape[0] == 2 else torch.cat([given, given])
        v = model(torch.cat([ctx, x], dim=1), ts, labels)[:, 3:]
        alone = model(x, t[:, None], labels)
        return alone + weight * (v - alone)

    ref = euler(classifier_free_guidance(frame3, cfg), noise, model.condition(y), steps=3).clamp(-1, 1)
    assert (ref.float() - out[:, 3:4]).abs().max() < 1e-6
    plain = sample_video(model, SamplingConfig(), y, **kw)
    assert (plain[:, 3:] - out[:, 3:]).abs().max() > 1e-4  # it does change the frames
    assert torch.equal(sample_video(model, SamplingConfig(), y, history_guidance=1.0, **kw), plain)


def test_history_guidance_leaves_the_first_frame_and_checks_its_input():
    model = tiny_video(noise_levels="frame", dtype=torch.float64)
    y = torch.tensor([2, 5])
    kw = dict(frames=3, steps=2, seed=1)
    plain = sample_video(model, SamplingConfig(), y, **kw)
    strong = sample_video(model, SamplingConfig(), y, history_guidance=3.0, **kw)
    assert torch.equal(strong[:, 0], plain[:, 0])  # nothing finished before the first frame
    # with w = 0 every frame is drawn as a clip of its own from its noise
    alone = sample_video(model, SamplingConfig(), y, history_guidance=0.0, **kw)
    from polymixer.video import video_noise

    noise = video_noise(2, 3, (1, 8, 8), seed=1)
    for f in range(3):
        own = sample_video(model, SamplingConfig(), y, frames=1, steps=2, noise=noise[:, f:f + 1].double())
        assert (own[:, 0] - alone[:, f]).abs().max() < 1e-6
    for bad in (-0.5, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="history_guidance"):
            sample_video(model, SamplingConfig(), y, history_guidance=bad, **kw)
    with pytest.raises(ValueError, match="history_guidance.*sequential"):
        sample_video(model, SamplingConfig(), y, history_guidance=2.0, mode="joint", **kw)
    with pytest.raises(ValueError, match="history_guidance.*one noise level per frame"):
        sample_video(tiny_video(dtype=torch.float64), SamplingConfig(), y, history_guidance=2.0, **kw)


def test_video_bad_input():
    model = tiny_video()
    pipe = SamplingConfig()
    with pytest.raises(ValueError, match="frames: expected a positive int"):
        sample_video(model, pipe, torch.tensor([1]), frames=0)
    with pytest.raises(ValueError, match="noise level per clip"):
        sample_video(model, pipe, torch.tensor([1]), frames=4, given_frames=torch.zeros(1, 2, 1, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        sample_video(model, pipe, torch.tensor([1]), frames=2, mode="parallel")
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 2, 3, 8, 8), torch.rand(1), torch.tensor([1]))
    with pytest.raises(ValueError, match="patch size"):
        model(torch.zeros(1, 2, 1, 7, 8), torch.rand(1), torch.tensor([1]))
    with pytest.raises(ValueError, match="temporal patch"):
        tiny_video(temporal_patch=2)(torch.zeros(1, 3, 1, 8, 8), torch.rand(1), torch.tensor([1]))
    with pytest.raises(ValueError, match="t:"):
        tiny_video(noise_levels="frame")(torch.zeros(2, 3, 1, 8, 8), torch.rand(2, 2), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="StateCache"):
        tiny_video().step(torch.zeros(1, 1, 1, 8, 8), torch.rand(1), torch.tensor([1]), [None, None])
    local = tiny_video(frame_local_every=2)
    with pytest.raises(ValueError, match=r"each block that mixes across frames \['1'\]"):
        local.step(torch.zeros(1, 1, 1, 8, 8), torch.rand(1), torch.tensor([1]), tiny_video().init_state(1))
    with pytest.raises(ValueError, match="noise_levels"):
        VideoDiTConfig(noise_levels="frame", temporal_patch=2, frames=4)
    for bad in (-1, 1.5, True):  # the legacy field, in a saved config
        with pytest.raises(ValueError, match="frame_local_every"):
            VideoDiTConfig.from_dict({"architecture": "polymixer.VideoDiT", "frame_local_every": bad})
    for bad in ("pom, ", "local pom", "frame-local", "pom attention", "nope"):
        with pytest.raises(ValueError, match="mixer: bad entry"):
            VideoDiTConfig(mixer=bad)
    with pytest.raises(ValueError, match="block_size: a frame-local block needs whole frames"):
        local.blocks[0](torch.zeros(1, 8, 32), torch.zeros(1, 32), block_size=3)
    with pytest.raises(ValueError, match="takes only block_size"):
        local.blocks[0](torch.zeros(1, 8, 32), torch.zeros(1, 32), block_size=4, causal=True)
    per_frame = tiny_video(noise_levels="frame")
    with pytest.raises(ValueError, match="already has"):
        sample_video(per_frame, pipe, torch.tensor([1]), frames=2, given_frames=torch.zeros(1, 2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"given_frames: expected clean frames"):
        sample_video(per_frame, pipe, torch.tensor([1, 2]), frames=4, given_frames=torch.zeros(1, 2, 1, 8, 8))


def test_video_save_load_round_trip(tmp_path):
    from polymixer.models import DiT, load_pretrained

    model = tiny_video(noise_levels="frame")
    folder = model.save_pretrained(tmp_path / "v")
    loaded = load_pretrained(folder)
    assert isinstance(loaded, VideoDiT) and loaded.config == model.config
    x, t, y = clip_inputs(per_frame=True)
    assert torch.equal(loaded(x, t, y), model(x, t, y))
    from polymixer.io import CheckpointError

    with pytest.raises(CheckpointError, match="not a DiT config"):
        DiT.from_pretrained(folder)

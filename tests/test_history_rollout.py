"""Training on the model's own frames (``TrainConfig.history_rollout``): the frame-by-frame
regeneration of a clip's clean prefix against its definition with the parallel call, and the
training step that reads the regenerated prefix and trains the real frames after it."""

import pytest
import torch

from polymixer.conditioning import ClassLabels
from polymixer.diffusion import FlowMatching
from polymixer.models import VideoDiT, VideoDiTConfig
from polymixer.video import regenerate_frames

from helpers import random_weights

pytest.importorskip("mlxtend")


def _video(mixer="pom", **kw):
    torch.manual_seed(0)
    config = VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, mlp_ratio=2.0,
                            frames=4, mixer=mixer, noise_levels="frame", n_classes=10, **kw)
    return random_weights(VideoDiT(config), torch.float64)


def _parallel_regeneration(model, objective, frames, cond, levels, noise, history_noise, history_eps, steps):
    """The definition: frame k integrated with the parallel call on the clip (fed frames before, frame k)."""
    B, K = frames.shape[:2]
    fed, out = [], []
    for k in range(K):
        x = objective.add_noise(frames[:, k:k + 1], levels[:, k], noise[:, k:k + 1])
        for j in range(steps):
            t0, t1 = levels[:, k] * (1 - j / steps), levels[:, k] * (1 - (j + 1) / steps)
            clip = torch.cat(fed + [x], dim=1)
            t = torch.cat([torch.full((B, k), history_noise, dtype=frames.dtype), t0[:, None]], dim=1)
            v = model(clip, t, cond)[:, k:k + 1]
            x = x + (t1 - t0).view(B, 1, 1, 1, 1) * v
        out.append(x)
        fed.append(objective.add_noise(x, history_noise, history_eps[:, k:k + 1]))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("mixer,kw", [("pom", dict(pom_frame_memory="gated-decay", pom_rotary=3)),
                                      ("pom", dict(context_frames=2)),
                                      ("attention", dict(attention_window=2))])
@pytest.mark.parametrize("steps,history_noise", [(1, 0.0), (2, 0.05), (3, 0.2)])
def test_regeneration_frame_by_frame_equals_its_parallel_definition(mixer, kw, steps, history_noise):
    model = _video(mixer, **kw)
    g = torch.Generator().manual_seed(3)
    B, K = 2, 4
    frames = torch.randn(B, K, 1, 8, 8, generator=g, dtype=torch.float64)
    levels = torch.rand(B, K, generator=g, dtype=torch.float64)
    noise, history_eps = (torch.randn(frames.shape, generator=g, dtype=torch.float64) for _ in range(2))
    cond = ClassLabels(torch.tensor([3, 7]), 10)
    objective = FlowMatching()
    model.train()
    got = regenerate_frames(model, objective, frames, cond, levels, noise=noise, history_noise=history_noise,
                            history_eps=history_eps, steps=steps)
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        want = _parallel_regeneration(model.eval(), objective, frames, cond, levels, noise, history_noise,
                                      history_eps, steps)
    assert got.shape == frames.shape
    assert (got - want).abs().max() < 1e-10
    assert (got - frames).abs().max() > 1e-3  # the model's own frames, not the given ones
    # level 0 gives a frame back exactly, and a frame depends on the regenerated frames before it only
    zero = levels.clone()
    zero[:, 1] = 0
    again = regenerate_frames(model, objective, frames, cond, zero, noise=noise, history_noise=history_noise,
                              history_eps=history_eps, steps=steps)
    assert torch.equal(again[:, 1], frames[:, 1])
    assert torch.equal(again[:, 0], got[:, 0])
    assert (again[:, 2:] - got[:, 2:]).abs().max() > 1e-8


def test_regeneration_errors():
    model = _video()
    frames = torch.zeros(1, 2, 1, 8, 8, dtype=torch.float64)
    cond = ClassLabels(torch.tensor([1]), 10)
    levels = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="levels"):
        regenerate_frames(model, FlowMatching(), frames, cond, levels[:, :1], noise=frames)
    with pytest.raises(ValueError, match="history_eps"):
        regenerate_frames(model, FlowMatching(), frames, cond, levels, noise=frames, history_noise=0.1)
    with pytest.raises(ValueError, match="steps"):
        regenerate_frames(model, FlowMatching(), frames, cond, levels, noise=frames, steps=0)
    from polymixer.diffusion import DDPM

    with pytest.raises(TypeError, match="FlowMatching"):
        regenerate_frames(model, DDPM(), frames, cond, levels, noise=frames)


def test_training_reads_the_regenerated_prefix_and_trains_the_real_frames_after_it(tmp_path, monkeypatch):
    """Each step with a prefix: the model reads, before the real frames, what the regeneration
    made of the prefix (a sentinel here, at most at the history noise level); the loss is that
    of the frames after the prefix; the regeneration reads the clips' real prefix frames;
    resume stays exact; clear errors."""
    import polymixer.train as T
    from polymixer.diffusion import objectives

    from test_video_train import video_config

    calls, seen = [], []
    original_rollout = T._rollout_prefix

    def sentinel(run, prefix, y):
        calls.append(prefix.clone())
        return torch.full_like(prefix, 5.0)

    original = objectives.FlowMatching.loss_at

    def spy(self, model, x0, y, t, eps, loss_frames=None, **context):
        seen.append((x0.clone(), t.clone(), loss_frames))
        return original(self, model, x0, y, t, eps, loss_frames=loss_frames, **context)

    monkeypatch.setattr(T, "_rollout_prefix", sentinel)
    monkeypatch.setattr(objectives.FlowMatching, "loss_at", spy)
    for target in ("all", "next"):
        calls.clear(), seen.clear()
        T.train(video_config(tmp_path / target, noise_levels="frame", history_noise=0.05, history_rollout=0.5,
                              history_target=target, frames=4, steps=8, checkpoint_every=8))
        assert len(seen) == 8
        prefixes = [int((x0 == 5.0).all(dim=(0, 2, 3, 4)).sum()) for x0, _, _ in seen]
        assert len(calls) == sum(p > 0 for p in prefixes) and any(prefixes)
        for (x0, t, frames), p in zip(seen, prefixes):
            assert (x0[:, :p] == 5.0).all() and (x0[:, p:].abs() <= 1).all()  # the sentinel, then real frames
            assert (t[:, :p] <= 0.05).all()
            end = p + 1 if target == "next" else 4
            assert x0.shape[1] == end and (frames == slice(p, end) if p or target == "next" else frames is None)
        assert all((c.abs() <= 1).all() for c in calls)  # the real prefix frames go in
    monkeypatch.setattr(T, "_rollout_prefix", original_rollout)
    monkeypatch.setattr(objectives.FlowMatching, "loss_at", original)
    cfg = dict(noise_levels="frame", history_noise=0.05, history_rollout=0.5, rollout_steps=1, frames=4, steps=6,
               checkpoint_every=3)
    straight = T.train(video_config(tmp_path / "a", **cfg))
    T.train(video_config(tmp_path / "b", **dict(cfg, steps=3)))
    resumed = T.train(video_config(tmp_path / "b", **cfg), resume=True)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    without = T.train(video_config(tmp_path / "w", **dict(cfg, history_rollout=0.0)))
    assert any(not torch.equal(a[k], without["model"].state_dict()[k]) for k in a)
    with pytest.raises(ValueError, match="history_rollout"):
        video_config(tmp_path / "c", noise_levels="frame", history_rollout=0.5)  # no history noise
    with pytest.raises(ValueError, match="history_rollout"):
        video_config(tmp_path / "c", noise_levels="frame", history_noise=0.05, history_rollout=1.5)
    with pytest.raises(ValueError, match="rollout_steps"):
        video_config(tmp_path / "c", noise_levels="frame", history_noise=0.05, history_rollout=0.5, rollout_steps=0)
    monkeypatch.setattr(VideoDiT, "can_stream", lambda self: False)  # e.g. a registered mixer without a state
    with pytest.raises(ValueError, match="cannot stream"):
        T.train(video_config(tmp_path / "d", noise_levels="frame", history_noise=0.05, history_rollout=0.5,
                             steps=1))

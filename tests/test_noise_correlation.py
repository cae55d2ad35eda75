"""experiments/noise_correlation.py: the evaluation with starting noise shared across frames."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "noise_correlation.py"


def test_shared_noise_is_what_it_says(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")
    import polymixer.video as video
    from polymixer.evaluate import evaluate_checkpoint
    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig

    spec = importlib.util.spec_from_file_location("noise_correlation", SCRIPT)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=2, mixer="pom", n_classes=10, noise_levels="frame",
                                    frame_embedding="none"))
    folder = model.save_pretrained(tmp_path / "video")
    SamplingConfig(dataset="moving-digits", history_noise=0.05).save(folder)
    monkeypatch.setattr("polymixer.evaluate.REFERENCE_FRAMES", 300)
    seen = []
    plain_sample = video.sample_video

    def spy(*args, noise, history_eps, **kw):
        seen.append((noise.clone(), history_eps.clone()))
        return plain_sample(*args, noise=noise, history_eps=history_eps, **kw)

    monkeypatch.setattr(video, "sample_video", spy)
    base = ["--checkpoint", str(folder), "--num-samples", "4", "--frames", "2", "--steps", "1", "--cfg", "1"]
    probe.main(base + ["--rho", "0", "--out", str(tmp_path / "r0")])
    r0 = json.loads((tmp_path / "r0.json").read_text())
    plain = evaluate_checkpoint(folder, num_samples=4, frames=2, steps=1, cfg_scale=1.0, mode="sequential",
                                history_noise=0.05)
    assert r0["noise_correlation"] == 0 and r0["per_frame"]["frechet_distance"] == plain["per_frame"]["frechet_distance"]
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
    probe.main(base + ["--rho", "1", "--out", str(tmp_path / "r1")])
    assert torch.equal(seen[2][0][:, 0], seen[2][0][:, 1])  # one draw for every frame of a clip
    assert not torch.equal(seen[2][0][0, 0], seen[2][0][1, 0])  # but one per clip
    assert torch.equal(seen[2][1], seen[0][1])  # the history noise is the evaluation's
    probe.main(base + ["--rho", "0.5", "--out", str(tmp_path / "r5")])
    shared = seen[2][0][:, :1]
    assert torch.allclose(seen[3][0], 0.5 ** 0.5 * shared + 0.5 ** 0.5 * seen[0][0])
    assert video.video_noise is probe.video.video_noise and video.video_noise(1, 1, (1, 2, 2), 0).shape == (1, 1, 1, 2, 2)
    with pytest.raises(SystemExit):
        probe.main(base + ["--rho", "1.5", "--out", str(tmp_path / "bad")])

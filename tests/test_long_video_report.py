"""experiments/compare_long_video_report.py: the issue's checks and bands from evaluation
results, on made-up per-frame numbers whose answers are known."""

import importlib.util
import json
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "experiments" / "compare_long_video_report.py"


def load():
    spec = importlib.util.spec_from_file_location("compare_long_video_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_eval(fd, acc, real_acc):
    n = len(fd)
    return {"num_samples": 10, "steps": 20, "sampler": "euler", "cfg_scale": 2.0, "seed": 0,
            "per_frame": {"frechet_distance": fd, "conditional_accuracy": acc},
            "per_frame_real": {"frechet_distance": [1.0] * n, "conditional_accuracy": real_acc},
            "identity": {"whole_clip": 0.75, "per_frame": [1.0] * n},
            "identity_real": {"whole_clip": 0.5, "per_frame": [1.0] * n},
            "shape_change": {"generated": 0.3, "real": 0.0, "per_frame": [0.3] * (n - 1)},
            "motion": {"mean_speed": {"generated": 1.5, "real": 2.0},
                       "wall_reversal_fraction": {"generated": 0.5, "real": 0.9}, "speed_wasserstein": 0.4},
            "clip_frechet_distance": [3.0, 4.0], "clip_frechet_distance_real": [0.5, 0.6]}


def test_checks_and_bands(tmp_path):
    report = load()
    n = 20
    fd = [10.0] * 8 + [20.0] * 8 + [40.0] * 4  # frames 5-8: 10, last 4: 40
    acc = [0.9] * n
    acc[12] = 0.45  # frame 13: half the real accuracy there
    result = fake_eval(fd, acc, [0.9] * n)
    c = report.checks(result)
    assert c["late_over_early_fd"] == 4.0
    assert abs(c["worst_accuracy_ratio"] - 0.5) < 1e-12 and c["worst_accuracy_position"] == 13
    assert c["identity_whole_clip"] == 0.75 and c["identity_whole_clip_real"] == 0.5 and c["shape_change"] == 0.3 and c["clip_fd_last"] == 4.0 and c["speed_real"] == 2.0
    assert report.bands(20) == [(0, 8), (8, 16), (16, 20)]
    for seed, shift in ((0, 0.0), (1, 2.0)):
        r = fake_eval([v + shift for v in fd], acc, [0.9] * n)
        (tmp_path / f"pom_mean_seed{seed}_eval20.json").write_text(json.dumps(r))
    report.main(["--runs", str(tmp_path), "--frames", "20", "--out", str(tmp_path / "out")])
    text = (tmp_path / "out.md").read_text()
    # frames 9-16 of the two seeds: 20 and 22, mean 21 and sample deviation 1.4
    assert "| pom_mean | 2 | 11.0 ± 1.4 (1.0) | 21.0 ± 1.4 (1.0) | 41.0 ± 1.4 (1.0) |" in text
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [s["seed"] for s in saved["pom_mean"]] == [0, 1]


def test_a_guidance_sweep_names_each_models_scale(tmp_path):
    report = load()
    n = 8
    for name, scale in (("pom_gated_cfg2", 2.0), ("pom_gated_cfg3", 3.0)):
        r = fake_eval([10.0] * n, [0.9] * n, [0.9] * n)
        r["cfg_scale"] = scale
        (tmp_path / f"{name}_seed0_eval8.json").write_text(json.dumps(r))
    report.main(["--runs", str(tmp_path), "--frames", "8", "--out", str(tmp_path / "out")])
    text = (tmp_path / "out.md").read_text()
    assert "cfg 2 for pom_gated_cfg2, 3 for pom_gated_cfg3" in text


def test_training_seeds_and_legend_words(tmp_path, monkeypatch):
    report = load()
    n = 8
    for seed in (0, 2):
        (tmp_path / f"pom_gated_next_seed{seed}_eval8.json").write_text(json.dumps(fake_eval([10.0] * n, [0.9] * n, [0.9] * n)))
    drawn = {}
    monkeypatch.setattr(report, "plot", lambda models, path, labels=None: drawn.update(labels or {}))
    report.main(["--runs", str(tmp_path), "--frames", "8", "--out", str(tmp_path / "out"),
                 "--label", "pom_gated_next=PoM, next frame only"])
    text = (tmp_path / "out.md").read_text()
    assert "sampling seed 0" in text and "- training seeds: pom_gated_next 0, 2" in text
    assert drawn == {"pom_gated_next": "PoM, next frame only"}
    for bad in ("pom_gated_next", "attention=plain attention"):
        try:
            report.main(["--runs", str(tmp_path), "--frames", "8", "--out", str(tmp_path / "out"), "--label", bad])
        except SystemExit as error:
            assert error.code == 2
        else:
            raise AssertionError(f"--label {bad!r} was accepted")

"""The GPU benchmark scripts, run on the CPU at toy sizes: they must work the day a GPU is lent."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_profile_mixer_tables_every_implementation(tmp_path):
    profile_mixer = load("profile_mixer")
    out = tmp_path / "profile"
    profile_mixer.main(["--device", "cpu", "--n", "37", "--dim", "16", "--batch", "2", "--dtype", "float32",
                        "--warmup", "0", "--repeats", "1", "--top", "4", "--causal", "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert list(results) == ["fused", "lean", "autograd"]
    for r in results.values():
        assert r["ms_per_step"] > 0 and 1 <= len(r["ops"]) <= 4
        assert sum(op["share"] for op in r["ops"]) <= 1 + 1e-9
    text = out.with_suffix(".md").read_text()
    assert all(f"## {impl}" in text for impl in results) and "causal context" in text


def test_profile_mixer_rejects_unknown_implementation():
    with pytest.raises(SystemExit):
        load("profile_mixer").main(["--device", "cpu", "--implementations", "fused,flash"])


def test_dit_scaling_mixed_precision_and_crossover(tmp_path):
    bench = load("bench_dit_scaling")
    out = tmp_path / "scaling"
    bench.main(["--preset", "DiT-T/2", "--tokens", "4,16", "--repeats", "1", "--what", "forward",
                "--dtype", "bfloat16", "--no-memory", "--threads", "1", "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    assert "bfloat16 autocast" in text and "| 16 | forward |" in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {(r["mixer"], r["tokens"]) for r in rows} == {(m, n) for m in ("pom", "attention") for n in (4, 16)}


def test_dit_scaling_cpu_clock(tmp_path):
    """--clock cpu times CPU seconds (the work done, for a shared machine) and says so; refused on CUDA."""
    bench = load("bench_dit_scaling")
    out = tmp_path / "scaling"
    bench.main(["--preset", "DiT-T/2", "--tokens", "4", "--repeats", "2", "--what", "forward,train_step",
                "--no-memory", "--threads", "1", "--clock", "cpu", "--out", str(out)])
    assert "median of interleaved repeats of CPU seconds" in out.with_suffix(".md").read_text()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 4 and all(r["seconds"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        bench.main(["--clock", "cpu", "--device", "cuda", "--tokens", "4"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc/self/status")
def test_stream_memory_records_every_frame_asked(tmp_path):
    bench = load("bench_stream_memory")
    out = tmp_path / "stream"
    bench.main(["--frames", "6", "--every", "3", "--batch", "1", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [p["frame"] for p in saved["points"]] == [1, 3, 6]
    assert all(p["peak_mb"] >= p["rss_mb"] - 1e-9 for p in saved["points"])  # the peak is never below the resident
    text = out.with_suffix(".md").read_text()
    assert "| 6 |" in text and "Peak over the second half" in text
    with pytest.raises(SystemExit):
        bench.main(["--frames", "3", "--out", str(out)])


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_bench_video_rolling_cache_rival(tmp_path, clock):
    """The rolling-cache rival is checked against joint attention under its window mask, then
    measured beside PoM (toy sizes; the numbers themselves belong to the benchmark)."""
    bench_video = load("bench_video")
    out = tmp_path / "video"
    bench_video.main(["--frames", "4", "--steps", "1", "--image-size", "8", "--patch-size", "4", "--width", "16",
                      "--depth", "1", "--heads", "2", "--window", "2", "--rivals", "pom-sequential,attention-rolling",
                      "--clock", clock, "--out", str(out)])
    assert ("CPU seconds of the generating process" in out.with_suffix(".md").read_text()) == (clock == "cpu")
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sorted((r["rival"], r["frames"]) for r in rows) == [("attention-rolling", 4), ("pom-sequential", 4)]
    assert all(len(r["frame_seconds"]) == r["frames"] for r in rows)
    text = out.with_suffix(".md").read_text()
    assert "attention-rolling keeps the last 2 frames" in text and "attention-rolling / pom-sequential" in text


def test_bench_video_pom_rivals_take_a_hybrid_mixer(tmp_path):
    """--pom-mixer gives the PoM rivals another pattern (PoM beside the frame-and-previous-frame
    softmax): the equivalence check (frame by frame == joint) runs on it too."""
    bench_video = load("bench_video")
    out = tmp_path / "video"
    bench_video.main(["--frames", "3", "--steps", "1", "--image-size", "8", "--patch-size", "4", "--width", "16",
                      "--depth", "1", "--heads", "2", "--rivals", "pom-sequential",
                      "--pom-mixer", "pom + spacetime-local", "--out", str(out)])
    assert "the PoM rivals' mixer 'pom + spacetime-local'" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="whole pattern"):
        bench_video.main(["--frames", "3", "--pom-mixer", "pom + conv", "--frame-local-every", "2",
                          "--out", str(tmp_path / "bad")])


def test_bench_history_step_times_every_variant_on_the_same_steps(tmp_path):
    pytest.importorskip("mlxtend")
    bench = load("bench_history_step")
    out = tmp_path / "history"
    bench.main(["--rounds", "1", "--steps", "1", "--batch", "2", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert set(saved["median"]) == {"all", "next", "next + rollout"}
    assert all(len(v) == 1 and v[0] > 0 for v in saved["seconds_per_step"].values())
    text = out.with_suffix(".md").read_text()
    assert "| all |" in text and "| next + rollout |" in text and "1.00 |" in text

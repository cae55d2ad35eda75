"""Table and plot of experiments/compare_long_video.sh: long clips generated frame by frame, by frame position.

    python experiments/compare_long_video_report.py [--runs runs/compare_long_video] [--frames 64]
        [--out benchmarks/results/compare_long_video_cpu] [--label NAME=TEXT ...]

For every RUNS/NAME_seedS_evalF.json (`polymixer eval --frames F` of a video model) it writes,
per model:

* the per-frame Fréchet distance and conditional accuracy, averaged over bands of frame
  positions (1-8, 9-16, 17-32, ...), beside the same for as many real clips (the floor);
* the issue's checks: the lowest accuracy over the positions relative to the real clips' at
  that position (goal: >= 0.9), the Fréchet distance of the last frames over that of frames
  5-8 (goal: <= 1.25; both as 4-frame means, single frames of 100 samples being noisy), the
  share of clips that keep their first frame's digit in every frame, and the motion against
  real clips (speed, reversals at a wall, the speed distribution's distance);
* the clip Fréchet distance (bundled clip classifier) of the first and the last 8-frame window;

and a plot of the per-position curves (Fréchet distance and accuracy, real clips dashed).
Several seeds of a model: the mean, with the spread of the seeds in the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from pathlib import Path

BAND_EDGES = (0, 8, 16, 32, 64, 128, 256, 512)
SMOOTH = 4  # frames averaged for the late/early ratio


def load_runs(runs: list[Path], frames: int) -> dict[str, list[dict]]:
    """``{name: [eval result per seed]}`` of the ``*_seed*_eval{frames}.json`` in ``runs``."""
    out: dict[str, list[dict]] = {}
    for folder in runs:
        for path in sorted(folder.glob(f"*_seed*_eval{frames}.json")):
            name, seed = path.name[: -len(f"_eval{frames}.json")].rsplit("_seed", 1)
            result = json.loads(path.read_text())
            result["_seed"] = int(seed)
            out.setdefault(name, []).append(result)
    return out


def bands(n: int) -> list[tuple[int, int]]:
    """Frame-position bands ``[a, b)`` covering ``n`` frames."""
    edges = [e for e in BAND_EDGES if e < n] + [n]
    return list(zip(edges[:-1], edges[1:]))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def checks(result: dict) -> dict:
    """The issue's per-model checks from one evaluation (see the module docstring)."""
    fd = result["per_frame"]["frechet_distance"]
    acc = result["per_frame"]["conditional_accuracy"]
    real_acc = result["per_frame_real"]["conditional_accuracy"]
    n = len(fd)
    early = mean(fd[max(0, min(8, n) - SMOOTH):min(8, n)])
    out = {"late_over_early_fd": mean(fd[-SMOOTH:]) / early,
           "identity_whole_clip": result["identity"]["whole_clip"]}
    if "identity_real" in result:
        out["identity_whole_clip_real"] = result["identity_real"]["whole_clip"]
    if "shape_change" in result:
        out["shape_change"] = result["shape_change"]["generated"]
        out["shape_change_real"] = result["shape_change"]["real"]
    if acc is not None:
        ratios = [a / max(r, 1e-9) for a, r in zip(acc, real_acc)]
        out["worst_accuracy_ratio"] = min(ratios)
        out["worst_accuracy_position"] = ratios.index(min(ratios)) + 1
    motion = result.get("motion")
    if motion:
        out["speed"] = motion["mean_speed"]["generated"]
        out["speed_real"] = motion["mean_speed"]["real"]
        out["wall_reversals"] = motion["wall_reversal_fraction"]["generated"]
        out["wall_reversals_real"] = motion["wall_reversal_fraction"]["real"]
        out["speed_wasserstein"] = motion["speed_wasserstein"]
    if "clip_frechet_distance" in result:
        out["clip_fd_first"] = result["clip_frechet_distance"][0]
        out["clip_fd_last"] = result["clip_frechet_distance"][-1]
        out["clip_fd_real_last"] = result["clip_frechet_distance_real"][-1]
    return out


def spread(values: list[float], fmt: str) -> str:
    """``mean ± sample standard deviation`` over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def report(models: dict[str, list[dict]], frames: int, command: str) -> list[str]:
    first = next(iter(models.values()))[0]
    n = len(first["per_frame"]["frechet_distance"])
    band_list = bands(n)
    scales = {name: sorted({r["cfg_scale"] for r in runs}) for name, runs in models.items()}
    if len({tuple(v) for v in scales.values()}) == 1:
        guidance = f"cfg {first['cfg_scale']}"
    else:  # a guidance sweep: say each model's scale
        guidance = "cfg " + ", ".join(f"{'/'.join(f'{c:g}' for c in v)} for {name}" for name, v in scales.items())
    lines = [
        f"# Long clips generated frame by frame: per frame position, {n} frames (CPU)",
        "",
        f"- table: `{command}`, {datetime.date.today().isoformat()}",
        f"- evaluation: `polymixer eval --frames {frames}` of each EMA model ({first['num_samples']} clips, "
        f"{first['steps']} {first['sampler']} steps, {guidance}, sampling seed {first['seed']}); real = as many "
        "real clips scored the same way, frame position by position (the floor)",
        "- training seeds: " + "; ".join(f"{name} {', '.join(str(r['_seed']) for r in runs)}" for name, runs in models.items()),
        "- Fréchet distance on the bundled digit classifier's features of each frame against 5,000 real frames; "
        "accuracy = frames classified as the clip's digit",
        "",
        "Fréchet distance by frame positions (mean over the band; real clips in brackets):",
        "",
        "| model | seeds | " + " | ".join(f"frames {a + 1}-{b}" for a, b in band_list) + " |",
        "|---|---:|" + "---:|" * len(band_list),
    ]

    def band_cells(key: str, fmt: str) -> list[str]:
        cells = []
        for a, b in band_list:
            got = [mean(r["per_frame"][key][a:b]) for r in results]
            real = mean(results[0]["per_frame_real"][key][a:b])
            cells.append(f"{spread(got, fmt)} ({real:{fmt}})")
        return cells

    for name, results in models.items():
        lines.append(f"| {name} | {len(results)} | " + " | ".join(band_cells("frechet_distance", ".1f")) + " |")
    lines += ["", "Accuracy by frame positions:", "",
              "| model | seeds | " + " | ".join(f"frames {a + 1}-{b}" for a, b in band_list) + " |",
              "|---|---:|" + "---:|" * len(band_list)]
    for name, results in models.items():
        if results[0]["per_frame"]["conditional_accuracy"] is not None:
            lines.append(f"| {name} | {len(results)} | " + " | ".join(band_cells("conditional_accuracy", ".3f")) + " |")
    keys = [("worst_accuracy_ratio", "lowest accuracy / real's (goal >= 0.9)", ".3f"),
            ("late_over_early_fd", f"FD last {SMOOTH} / frames 5-8 (goal <= 1.25)", ".2f"),
            ("identity_whole_clip", "same digit in every frame", ".3f"),
            ("identity_whole_clip_real", "real", ".3f"),
            ("shape_change", "shape change per frame", ".3f"), ("shape_change_real", "real", ".3f"),
            ("speed", "speed px/frame", ".2f"), ("speed_real", "real", ".2f"),
            ("wall_reversals", "reversals at a wall", ".2f"), ("wall_reversals_real", "real", ".2f"),
            ("speed_wasserstein", "speed distance", ".2f"),
            ("clip_fd_first", "clip FD first window", ".2f"), ("clip_fd_last", "clip FD last window", ".2f"),
            ("clip_fd_real_last", "real", ".2f")]
    per_model = {name: [checks(r) for r in results] for name, results in models.items()}
    present = [k for k in keys if any(k[0] in c for cs in per_model.values() for c in cs)]
    lines += ["", "Checks (issue 24's goals; mean ± seed spread):", "",
              "| model | " + " | ".join(label for _, label, _ in present) + " |",
              "|---|" + "---:|" * len(present)]
    for name, cs in per_model.items():
        lines.append(f"| {name} | " + " | ".join(spread([c[k] for c in cs], fmt) if all(k in c for c in cs) else "-"
                                                 for k, _, fmt in present) + " |")
    return lines


def plot(models: dict[str, list[dict]], path: Path, labels: dict[str, str] | None = None) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is an extra (pip install polymixer[bench])
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    real_drawn = False
    for name, results in models.items():
        n = len(results[0]["per_frame"]["frechet_distance"])
        xs = list(range(1, n + 1))
        for ax, key in zip(axes, ("frechet_distance", "conditional_accuracy")):
            if results[0]["per_frame"][key] is None:
                continue
            ys = [mean(r["per_frame"][key][i] for r in results) for i in range(n)]
            ax.plot(xs, ys, label=(labels or {}).get(name, name), linewidth=1.4)
        if not real_drawn:
            for ax, key in zip(axes, ("frechet_distance", "conditional_accuracy")):
                ax.plot(xs, results[0]["per_frame_real"][key], "k--", linewidth=1, label="real clips")
            real_drawn = True
    axes[0].set_yscale("log")
    axes[0].set_title("Fréchet distance per frame (lower is better)")
    axes[1].set_title("conditional accuracy per frame")
    for ax in axes:
        ax.set_xlabel("frame position")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path("runs/compare_long_video")])
    parser.add_argument("--frames", type=int, default=64, help="the evaluations' clip length (their file names)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_long_video_cpu"))
    parser.add_argument("--label", action="append", default=[], metavar="NAME=TEXT",
                        help="the plot legend's words for a model (default: its run name); repeatable")
    args = parser.parse_args(argv)
    labels = {}
    for item in args.label:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            parser.error(f"--label: expected NAME=TEXT, got {item!r}")
        labels[name] = text
    models = load_runs(args.runs, args.frames)
    if not models:
        raise SystemExit(f"no *_seed*_eval{args.frames}.json in {' '.join(map(str, args.runs))}")
    unknown = sorted(set(labels) - set(models))
    if unknown:
        parser.error(f"--label: no evaluation of {', '.join(unknown)} (models: {', '.join(models)})")
    command = shlex.join(["python", "experiments/compare_long_video_report.py", *(sys.argv[1:] if argv is None else argv)])
    lines = report(models, args.frames, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {name: [{"seed": r["_seed"], **checks(r), "per_frame": r["per_frame"], "per_frame_real": r["per_frame_real"]}
                for r in results] for name, results in models.items()}, indent=1) + "\n")
    plot(models, args.out.with_suffix(".png"), labels)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

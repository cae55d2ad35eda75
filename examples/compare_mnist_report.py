"""Table of the PoM vs attention comparison runs made by examples/compare_mnist.sh.

    python examples/compare_mnist_report.py [RUNS_DIR] [OUT_PREFIX]
reads RUNS_DIR (default runs/compare)/{pom,attention}_seed*/ (training checkpoints) and
*_eval.json (polymixer eval), and writes OUT_PREFIX.md/.json (default
benchmarks/results/compare_mnist_cpu) with each seed, the mean per mixer and the recipe.
"""

import datetime
import json
import statistics
import sys
from pathlib import Path

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/compare")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results/compare_mnist_cpu")
rows = []
for ev in sorted(runs.glob("*_seed*_eval.json")):
    name = ev.name[: -len("_eval.json")]
    mixer, seed = name.rsplit("_seed", 1)
    result = json.loads(ev.read_text())
    ckpts = sorted((runs / name / "checkpoints").glob("step_*"))
    state = json.loads((ckpts[-1] / "state.json").read_text())
    config = json.loads((runs / name / "ema_model" / "config.json").read_text())
    n_params = None
    try:
        from polymixer.sample import load_for_sampling

        n_params = sum(p.numel() for p in load_for_sampling(runs / name / "ema_model")[0].parameters())
    except Exception:  # noqa: BLE001 - the table is still useful without the count
        pass
    rows.append({"mixer": mixer, "seed": int(seed), "steps": state["step"],
                 "seconds_per_step": state["seconds_this_session"] / state["step"], "parameters": n_params,
                 "frechet_distance": result["frechet_distance"],
                 "conditional_accuracy": result["conditional_accuracy"],
                 "samples_per_second": result.get("samples_per_second"),
                 "frechet_distance_real": result["frechet_distance_real"], "num_samples": result["num_samples"],
                 "eval_steps": result["steps"], "cfg": result["cfg_scale"], "pom_heads": config.get("pom_heads")})
if not rows:
    raise SystemExit(f"no *_eval.json in {runs}")
lines = [
    "# PoM-DiT vs attention-DiT on MNIST 32x32, same budget (CPU)",
    "",
    "- recipe: `bash examples/compare_mnist.sh 0 1000` and `bash examples/compare_mnist.sh 1 1000`, at the same time (DiT-M/4, 6 blocks, width 128, batch 64, lr 1e-3, "
    "300 warm-up steps, EMA 0.999, flow matching; the two mixers trained at the same time, one thread each), then "
    "`polymixer eval --num-samples N --steps 20 --seed 0` (Euler, cfg 2) on the EMA model",
    f"- table: `python examples/compare_mnist_report.py`, {datetime.date.today().isoformat()}",
    "- Fréchet distance on the bundled digit classifier's features against the 5,000 real digits (lower is "
    "better; `real` = N real digits scored the same way); accuracy = samples classified as their digit",
    "- s/step and samples/s: wall time on the shared 2-core CPU with four runs (or evals) at once, so they "
    "compare the mixers only within this table",
    "",
    "| mixer | seed | parameters | steps | s/step | Fréchet distance (real) | conditional accuracy | samples/s |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for r in sorted(rows, key=lambda r: (r["mixer"] != "pom", r["seed"])):
    p = f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] else ""
    sps = f"{r['samples_per_second']:.1f}" if r["samples_per_second"] else ""
    lines.append(f"| {r['mixer']} | {r['seed']} | {p} | {r['steps']} | {r['seconds_per_step']:.2f} | "
                 f"{r['frechet_distance']:.1f} ({r['frechet_distance_real']:.1f}) | "
                 f"{r['conditional_accuracy']:.3f} | {sps} |")
lines.append("")
for mixer in ("pom", "attention"):
    sel = [r for r in rows if r["mixer"] == mixer]
    if sel:
        fd = [r["frechet_distance"] for r in sel]
        acc = [r["conditional_accuracy"] for r in sel]
        spread = f" ± {statistics.stdev(fd):.1f}" if len(fd) > 1 else ""
        lines.append(f"- {mixer}: Fréchet distance {statistics.mean(fd):.1f}{spread}, conditional accuracy "
                     f"{statistics.mean(acc):.3f} over {len(sel)} seed(s)")
out.parent.mkdir(parents=True, exist_ok=True)
out.with_suffix(".md").write_text("\n".join(lines) + "\n")
out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
print("\n".join(lines))

"""Table of experiments/compare_gate.sh: PoM configurations against attention on single moving-digit frames.

    python experiments/compare_gate_report.py [--runs runs/compare_gate [OTHER ...]] [--out benchmarks/results/compare_gate_cpu]

For every run RUNS/NAME_seedS/ with its RUNS/NAME_seedS_eval.json (`polymixer eval`) it
writes the parameters, the s/step, the Fréchet distance and conditional accuracy, and the
flow-matching loss of the EMA model on 48 held-out frames at fixed noise levels t (0 =
clean, 1 = noise; the same frames and noise for every model), which shows at which noise
levels one model is behind another.
"""

import argparse
import datetime
import functools
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch

from polymixer.checkpoint import latest_checkpoint
from polymixer.data.moving_digits import moving_digits
from polymixer.diffusion import FlowMatching
from polymixer.sample import load_for_sampling

LEVELS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--runs", type=Path, nargs="+", default=[Path("runs/compare_gate")],
                    help="run folders of compare_gate.sh (several: one table)")
parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_gate_cpu"))
args = parser.parse_args()
torch.set_num_threads(1)


@functools.cache
def held_out(frames: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean clips, labels and noise, the same for every model of that shape."""
    # clips 50000.. of another seed than training's: frames the runs never saw
    data = moving_digits(image_size, frames, num_clips=100_000, seed=12345)
    x0, y = data.batch(torch.arange(50_000, 50_048))
    return x0, y, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))


def held_out_losses(model, frames: int, image_size: int) -> list[float]:
    x0, y, eps = held_out(frames, image_size)
    flow = FlowMatching()
    out = []
    with torch.no_grad():  # batches of 16 of equal size: the mean of their means is the mean
        for t in LEVELS:
            out.append(float(torch.stack([flow.loss_at(model, x0[i:i + 16], y[i:i + 16], t, eps[i:i + 16])
                                          for i in range(0, len(x0), 16)]).mean()))
    return out


def seconds_per_step(state: dict, log: Path) -> float:
    """Wall seconds per step of the last training session that made the checkpoint ``state``."""
    start = state.get("session_start_step")
    if start is None:  # an older checkpoint: the session began one log interval before the log's first step
        first = next(int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("step "))
        start = first - state["train_config"]["log_every"]
    return state["seconds_this_session"] / (state["step"] - start)


rows = []
for ev in sorted(e for runs in args.runs for e in runs.glob("*_seed*_eval.json")):
    name, seed = ev.name[: -len("_eval.json")].rsplit("_seed", 1)
    folder = ev.parent / f"{name}_seed{seed}"
    result = json.loads(ev.read_text())
    last = latest_checkpoint(folder / "checkpoints")  # its EMA weights are the run's ema_model
    state = json.loads((last / "state.json").read_text())
    model = load_for_sampling(last)[0].eval()
    c = model.config
    rows.append({"name": name, "seed": int(seed), "runs": str(ev.parent), "mixer": c.mixer,
                 "pom_heads": c.pom_heads, "pom_expand": c.pom_expand, "pom_degree": c.pom_degree,
                 "pom_variant": c.pom_variant, "parameters": sum(p.numel() for p in model.parameters()),
                 "mlp_conv": getattr(c, "mlp_conv", 0), "pom_rotary": getattr(c, "pom_rotary", 0),
                 "stroke_frechet_distance": result.get("stroke_frechet_distance"),
                 "stroke_frechet_distance_real": result.get("stroke_frechet_distance_real"),
                 "steps": state["step"], "lr": state["train_config"]["lr"],
                 "seconds_per_step": seconds_per_step(state, folder.parent / f"{folder.name}.log"),
                 "frechet_distance": result["frechet_distance"],
                 "frechet_distance_real": result["frechet_distance_real"],
                 "conditional_accuracy": result["conditional_accuracy"], "num_samples": result["num_samples"],
                 "loss_at_t": dict(zip(map(str, LEVELS), held_out_losses(model, c.frames, c.image_size))),
                 "per_class_accuracy": result.get("per_class_accuracy")})
if not rows:
    raise SystemExit(f"no *_eval.json in {' '.join(map(str, args.runs))}")
order = {name: i for i, name in enumerate(["pom", "pom_fullgate", "pom_e1", "power_fullgate", "power_k3_fullgate",
                                             "power_e4", "attention"])}
rows.sort(key=lambda r: (order.get(r["name"], 9), r["name"], -r["lr"], r["seed"]))
steps = max(r["steps"] for r in rows)
groups = list(dict.fromkeys((r["name"], r["lr"]) for r in rows))  # a model and its learning rate


def command(runs: str, seed: int) -> str:
    """The compare_gate.sh command that made the runs of one folder and seed."""
    here = [r for r in rows if r["runs"] == runs and r["seed"] == seed]
    names_here = [r["name"] for r in here]
    default = set(names_here) == {"pom", "pom_fullgate", "pom_e1", "attention"}
    env = "" if default else f"NAMES=\"{' '.join(names_here)}\" "
    env += f"RUNS={runs} " if Path(runs) != Path("runs/compare_gate") else ""
    lrs = {r["lr"] for r in here}
    env += f"LR={lrs.pop():g} " if lrs != {1e-3} else ""
    return f"`{env}bash experiments/compare_gate.sh {seed} {steps}`"


made = dict.fromkeys((r["runs"], r["seed"]) for r in rows)
lines = [
    "# PoM configurations against attention on single frames of moving digits, from scratch (CPU)",
    "",
    "- recipe: " + " and ".join(command(runs, seed) for runs, seed in made)
    + " (a 16x16 MNIST digit anywhere on a 32x32 canvas, 64 tokens; DiT-M/4 with 6 blocks, batch 64, lr 1e-3 (or LR), "
    "300 warm-up steps, EMA 0.999; the runs of one command trained at the same time, one thread each), then "
    f"`polymixer eval --num-samples {rows[0]['num_samples']} --steps 20 --batch-size 50 --seed 0` (Euler, cfg 2)",
    f"- table: `{shlex.join(['python', 'experiments/compare_gate_report.py', *sys.argv[1:]])}`, "
    f"{datetime.date.today().isoformat()}",
    "- Fréchet distance on the bundled digit classifier's features against 5,000 real frames (lower is better; "
    "`real` = as many real frames scored the same way); accuracy = samples classified as their digit",
    "- loss at t: flow-matching loss of the EMA model on 48 held-out frames at noise level t, the same frames "
    "and noise for every model",
    "",
    "| model | variant, k, e, gate | lr | seed | steps | parameters | s/step | Fréchet distance (real) | accuracy | "
    + ("stroke FD (real) | " if any(r["stroke_frechet_distance"] is not None for r in rows) else "")
    + " | ".join(f"loss t={t}" for t in LEVELS) + " |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    + ("---:|" if any(r["stroke_frechet_distance"] is not None for r in rows) else "") + "---:|" * len(LEVELS),
]
for r in rows:
    gate = "full" if r["pom_heads"] == 1 else f"{r['pom_heads']} heads"
    shape = f"{r['pom_variant']}, {r['pom_degree']}, {r['pom_expand']}, {gate}" if "pom" in r["mixer"] else "-"
    shape += f"; mixer {r['mixer']!r}" if r["mixer"] not in ("pom", "attention") else ""
    shape += f"; MLP conv {r['mlp_conv']}" if r["mlp_conv"] else ""
    shape += f"; rotary {r['pom_rotary']} axes" if r["pom_rotary"] else ""
    stroke = ""
    if any(q["stroke_frechet_distance"] is not None for q in rows):
        stroke = ("- | " if r["stroke_frechet_distance"] is None else
                  f"{r['stroke_frechet_distance']:.2f} ({r['stroke_frechet_distance_real']:.2f}) | ")
    lines.append(f"| {r['name']} | {shape} | {r['lr']:g} | {r['seed']} | {r['steps']} | {r['parameters'] / 1e6:.2f}M | "
                 f"{r['seconds_per_step']:.2f} | "
                 f"{r['frechet_distance']:.1f} ({r['frechet_distance_real']:.1f}) | {r['conditional_accuracy']:.3f} | "
                 + stroke + " | ".join(f"{v:.4f}" for v in r["loss_at_t"].values()) + " |")
lines.append("")
def _mean_sd(values, fmt: str) -> str:
    """``mean ± sample standard deviation`` (the spread of the seeds), or the one value."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{fmt}}{spread}"


for name, lr in groups:
    group = [r for r in rows if (r["name"], r["lr"]) == (name, lr)]
    lines.append(f"- {name}, lr {lr:g}: Fréchet distance {_mean_sd([r['frechet_distance'] for r in group], '.1f')}, "
                 f"accuracy {_mean_sd([r['conditional_accuracy'] for r in group], '.3f')}, stroke FD "
                 f"{_mean_sd([r['stroke_frechet_distance'] for r in group], '.2f')}, loss t=0.2 "
                 f"{_mean_sd([r['loss_at_t']['0.2'] for r in group], '.4f')} "
                 f"over {len(group)} seed(s)")
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
print("\n".join(lines))

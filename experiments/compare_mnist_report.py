"""Tables of the PoM vs attention comparison runs made by experiments/compare_mnist.sh (images)
and experiments/compare_video.sh (moving-digit clips).

    python experiments/compare_mnist_report.py                 # images -> benchmarks/results/compare_mnist_cpu.md/.json
    python experiments/compare_mnist_report.py --video         # clips  -> benchmarks/results/compare_video_cpu.md/.json
    python experiments/compare_mnist_report.py --runs DIR --out PREFIX
    python experiments/compare_mnist_report.py --video --runs runs/compare_video_spatial \
        --out benchmarks/results/compare_video_spatial_cpu --include benchmarks/results/compare_video_cpu.json

reads RUNS/{pom,attention}_seed*/ (training checkpoints) and *_eval.json (`polymixer eval`),
and writes each seed, the mean and spread per mixer, and (for clips) the per-frame metrics.
Runs of a variant (e.g. `--frame-local-every 2` or `--pom-heads 1`, passed by compare_video.sh's
EXTRA) are labelled with it; --include adds the rows of an earlier table's JSON (a baseline) beside them.
"""

import argparse
import datetime
import json
import shlex
import statistics
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--video", action="store_true", help="the clip comparison (runs/compare_video)")
parser.add_argument("--runs", type=Path, default=None)
parser.add_argument("--out", type=Path, default=None)
parser.add_argument("--include", type=Path, action="append", default=[],
                    help="JSON of an earlier table whose rows are added (marked with its file name)")
args = parser.parse_args()
runs = args.runs or Path("runs/compare_video" if args.video else "runs/compare")
out = args.out or Path("benchmarks/results/" + ("compare_video_cpu" if args.video else "compare_mnist_cpu"))


def parameter_count(folder: Path) -> int | None:
    try:
        from polymixer.sample import load_for_sampling

        return sum(p.numel() for p in load_for_sampling(folder)[0].parameters())
    except Exception:  # noqa: BLE001 - the table is still useful without the count
        return None


def local_every(config: dict) -> int:
    """k of a run whose blocks 0, k, 2k, ... are frame-local: from the mixer pattern
    ("frame-local pom, pom" -> 2), or the field of configs saved before patterns."""
    if config.get("frame_local_every"):
        return int(config["frame_local_every"])
    entries = [e.strip() for e in str(config.get("mixer", "")).split(",")]
    return len(entries) if entries[0].startswith("frame-local") else 0


def base_mixer(config: dict) -> str:
    """The mixer of a run's pattern without the frame-local marks ("frame-local pom, pom" -> pom)."""
    return str(config.get("mixer", "")).split(",")[-1].split()[-1]


def extra_options(config: dict) -> tuple[list[str], list[str]]:
    """The training options of a run that differ from the comparison's recipe (its EXTRA):
    those every mixer records, and the PoM-only ones (an attention run ignores them)."""
    general, pom_only = [], []
    if base_mixer(config) == "pom" and config.get("pom_heads") not in (None, config.get("heads")):
        pom_only += ["--pom-heads", str(config["pom_heads"])]
    return general, pom_only


def variant(config: dict) -> str:
    """The options of a run that differ from the comparison's recipe, as a label suffix."""
    parts = []
    if local_every(config):
        parts.append(f"spatial every {local_every(config)}")
    if extra_options(config)[1]:
        heads = config["pom_heads"]
        parts.append("full gate" if heads == 1 else f"{heads} gate heads")
    if config.get("mlp_conv"):
        parts.append(f"MLP conv {config['mlp_conv']}")
    if config.get("pom_rotary") and base_mixer(config) == "pom":
        parts.append(f"rotary {config['pom_rotary']} axes")
    return "".join(f", {p}" for p in parts)


rows = []
for ev in sorted(runs.glob("*_seed*_eval.json")):
    name = ev.name[: -len("_eval.json")]
    mixer, seed = name.rsplit("_seed", 1)
    result = json.loads(ev.read_text())
    ckpts = sorted((runs / name / "checkpoints").glob("step_*"))
    state = json.loads((ckpts[-1] / "state.json").read_text())
    config = json.loads((runs / name / "ema_model" / "config.json").read_text())
    train_config = json.loads((runs / name / "train_config.json").read_text())
    general, pom_only = extra_options(config)
    # all sessions of a resumed run (older checkpoints have only the last session's seconds)
    seconds = state.get("train_seconds", state["seconds_this_session"])
    rows.append({"mixer": mixer + variant(config), "name": mixer, "seed": int(seed), "steps": state["step"],
                 "init_from": train_config.get("init_from"), "frame_local_every": local_every(config),
                 "extra": shlex.join(general), "pom_extra": shlex.join(pom_only),
                 "seconds_per_step": seconds / state["step"], "parameters": parameter_count(runs / name / "ema_model"),
                 "frechet_distance": result["frechet_distance"],
                 "conditional_accuracy": result["conditional_accuracy"],
                 "samples_per_second": result.get("samples_per_second"),
                 "frechet_distance_real": result["frechet_distance_real"], "num_samples": result["num_samples"],
                 "eval_steps": result["steps"], "cfg": result["cfg_scale"], "pom_heads": config.get("pom_heads"),
                 "mode": result.get("mode"), "per_frame": result.get("per_frame"),
                 "stroke_frechet_distance": result.get("stroke_frechet_distance"),
                 "texture_frechet_distance": result.get("texture_frechet_distance"),
                 "precision": result.get("precision"), "recall": result.get("recall")})
if not rows:
    raise SystemExit(f"no *_eval.json in {runs}")
steps = sorted({r["steps"] for r in rows})
seeds = sorted({r["seed"] for r in rows})
n = rows[0]["num_samples"]
today = datetime.date.today().isoformat()
command = shlex.join(["python", "experiments/compare_mnist_report.py", *sys.argv[1:]])
included = []
for path in args.include:
    # a row that an earlier table had itself included keeps the mark of the table it came from
    included += [r if r["mixer"].endswith(")") else {**r, "mixer": f"{r['mixer']} ({path.stem})"}
                 for r in json.loads(path.read_text())]
marks = sorted({r["mixer"].rsplit("(", 1)[1].rstrip(")") for r in included})
if args.video:
    inits = {r["init_from"] for r in rows}
    shipped = all(i and Path(i).parent == Path("checkpoints/compare") for i in inits)
    env = "INIT_ROOT=checkpoints/compare " if shipped else ""
    mixers = sorted({r["mixer"].split(",")[0] for r in rows})  # the label without its variant suffix
    if mixers != ["attention", "pom"]:
        env = f'MIXERS="{" ".join(mixers)}" ' + env
    # one EXTRA made every run of the folder; PoM-only options show only in the PoM runs' configs
    general = {r["extra"] for r in rows}
    pom_only = {r["pom_extra"] for r in rows if r["mixer"].startswith("pom")}
    if len(general) > 1 or len(pom_only) > 1:
        raise SystemExit(f"{runs}: runs with different options {sorted(general | pom_only)}; "
                         "report them from separate folders")
    extra = " ".join(o for o in (*general, *pom_only) if o)
    if extra:
        env = f'EXTRA="{extra}" ' + env
    local = {r["frame_local_every"] for r in rows}
    if len(local) > 1:
        raise SystemExit(f"{runs}: runs with different frame-local blocks {sorted(local)}; report them separately")
    if local != {0}:
        env = f"LOCAL_EVERY={local.pop()} " + env
    if runs != Path("runs/compare_video"):
        env = f"RUNS={runs} " + env
    recipe = " and ".join(f"`{env}bash experiments/compare_video.sh {s} {steps[-1]}`" for s in seeds)
    init = ("each mixer starts from its own shipped seed-0 image model (checkpoints/compare) for every video seed, "
            "so only the video training seed differs between seeds" if shipped
            else "each mixer starts from its own seed-matched image model of compare_mnist.sh")
    lines = [
        "# PoM video DiT vs attention video DiT on moving digits, same budget (CPU)",
        "",
        f"- recipe: {recipe} (8 frames of 32x32, 512 tokens per clip, block-causal over frames, one noise level "
        f"per clip; {init}; batch 16, lr 5e-4, "
        "100 warm-up steps, EMA 0.998; two runs trained at the same time, one thread each), then "
        f"`polymixer eval --num-samples {n} --steps 20 --batch-size 50 --seed 0` on the EMA model (Euler, cfg 2; "
        "PoM frame by frame, attention jointly)",
        f"- table: `{command}`, {today}",
        "- per frame: Fréchet distance on the bundled digit classifier's features against 5,000 real frames of moving "
        "digits (lower is better; `real` = as many real frames scored the same way); accuracy = frames classified as "
        "the clip's digit; the table's values are the means over the 8 frame positions",
        "- s/step and clips/s: wall time on the shared 2-core CPU with two runs at once",
        *([f"- rows marked ({', '.join(marks)}): copied from the table named in the mark, same recipe "
           "(but the options in their label) and evaluation"] if included else []),
        "",
        "| mixer | seed | parameters | steps | s/step | Fréchet distance (real) | conditional accuracy | clips/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
else:
    names = sorted({r["name"] for r in rows})
    env = "" if names == ["attention", "pom"] else f'NAMES="{" ".join(names)}" '
    if runs != Path("runs/compare"):
        env += f"RUNS={runs} "
    recipe = " and ".join(f"`{env}bash experiments/compare_mnist.sh {s} {steps[-1]}`" for s in seeds)
    lines = [
        "# PoM-DiT vs attention-DiT on MNIST 32x32, same budget (CPU)",
        "",
        f"- recipe: {recipe} (DiT-M/4, 6 blocks, width 128, batch 64, lr 1e-3, "
        "300 warm-up steps, EMA 0.999, flow matching with logit-normal times; two or more runs trained at the same "
        f"time, one thread each), then `polymixer eval --num-samples {n} --steps 20 --seed 0` (Euler, cfg 2) on "
        "the EMA model",
        "- stroke FD: Fréchet distance of per-image stroke statistics (fragments, stray pixels, pinholes, edge, ink) "
        "against real digits', the metric that sees speckle; texture FD, precision and recall in the classifier's "
        "conv features (docs/training.md#evaluation); blank where the evaluation predates them",
        f"- table: `{command}`, {today}",
        "- Fréchet distance on the bundled digit classifier's features against the 5,000 real digits (lower is "
        "better; `real` = N real digits scored the same way); accuracy = samples classified as their digit",
        "- s/step and samples/s: wall time on the shared 2-core CPU with other runs (or evals) at once, summed "
        "over the sessions of a resumed run, so they compare the mixers only roughly",
        *([f"- rows marked ({', '.join(marks)}): copied from the table named in the mark, same recipe "
           "(but the options in their label) and evaluation"] if included else []),
        "",
        "| mixer | seed | parameters | steps | s/step | Fréchet distance (real) | conditional accuracy | stroke FD | "
        "texture FD | precision / recall | samples/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
rows += included
rows.sort(key=lambda r: (not r["mixer"].startswith("pom"), r["mixer"], r["seed"]))
labels = list(dict.fromkeys(r["mixer"] for r in rows))
for r in rows:
    p = f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] else ""
    sps = f"{r['samples_per_second']:.2f}" if r["samples_per_second"] else ""
    quality = ""
    if not args.video:
        def cell(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else ""
        pr = f"{r['precision']:.3f} / {r['recall']:.3f}" if r.get("precision") is not None else ""
        quality = f"{cell('stroke_frechet_distance', '.2f')} | {cell('texture_frechet_distance', '.1f')} | {pr} | "
    lines.append(f"| {r['mixer']} | {r['seed']} | {p} | {r['steps']} | {r['seconds_per_step']:.2f} | "
                 f"{r['frechet_distance']:.1f} ({r['frechet_distance_real']:.1f}) | "
                 f"{r['conditional_accuracy']:.3f} | {quality}{sps} |")
lines.append("")
for mixer in labels:
    sel = [r for r in rows if r["mixer"] == mixer]
    if sel:
        fd = [r["frechet_distance"] for r in sel]
        acc = [r["conditional_accuracy"] for r in sel]
        fd_spread = f" ± {statistics.stdev(fd):.1f}" if len(fd) > 1 else ""
        acc_spread = f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
        stroke = [r["stroke_frechet_distance"] for r in sel if r.get("stroke_frechet_distance") is not None]
        stroke_text = ""
        if stroke and not args.video:
            spread = f" ± {statistics.stdev(stroke):.2f}" if len(stroke) > 1 else ""
            stroke_text = f", stroke FD {statistics.mean(stroke):.2f}{spread}"
        lines.append(f"- {mixer}: Fréchet distance {statistics.mean(fd):.1f}{fd_spread}, conditional accuracy "
                     f"{statistics.mean(acc):.3f}{acc_spread}{stroke_text} over {len(sel)} seed(s)")
if args.video:
    frames = max(len(r["per_frame"]["frechet_distance"]) for r in rows if r["per_frame"])
    lines += ["", "Per frame (Fréchet distance / conditional accuracy):", "",
              "| frame | " + " | ".join(f"{r['mixer']} seed {r['seed']}" for r in rows) + " |",
              "|---:|" + "---:|" * len(rows)]
    for f in range(frames):
        cells = []
        for r in rows:
            pf = r["per_frame"]
            acc = pf["conditional_accuracy"][f] if pf.get("conditional_accuracy") else None
            cells.append(f"{pf['frechet_distance'][f]:.1f} / {acc:.3f}" if acc is not None
                         else f"{pf['frechet_distance'][f]:.1f}")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
out.parent.mkdir(parents=True, exist_ok=True)
out.with_suffix(".md").write_text("\n".join(lines) + "\n")
out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
print("\n".join(lines))

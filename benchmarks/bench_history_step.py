"""Cost of a training step of the long-video recipe by what it trains: every frame
(``--history-target all``), the frame after the clean prefix (``next``), and ``next`` with the
prefix remade by the model (``--history-rollout``), measured in one run.

The recipe is experiments/compare_long_video.sh's pom_gated (DiT-M/4 with 6 blocks, the MLP conv,
rotary PoM with the content-gated decay, clips of 4-12 frames of 32x32 moving digits, batch
16, history noise 0.05), from a random start (the cost does not depend on the weights). The
variants run the same steps (the same clips and prefixes: the step index picks them) in turns,
after a warm-up, and the table gives each one's median CPU seconds per step (process time, so
another job on the machine disturbs it less than the wall clock) and the ratio to ``all``.
Output (table and JSON) with the command, date and machine goes to ``benchmarks/results/``.

    python benchmarks/bench_history_step.py                          # 3 rounds of 10 steps
    python benchmarks/bench_history_step.py --rounds 1 --steps 2 --batch 2 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import machine  # benchmarks/_common.py

from polymixer.train import TrainConfig, build, prepare, train_step

VARIANTS = {"all": dict(history_target="all"), "next": dict(history_target="next"),
            "next + rollout": dict(history_target="next", history_rollout=0.5)}


def recipe(out: str, batch: int, **kw) -> TrainConfig:
    return TrainConfig(data="moving-digits", image_size=32, frames=12, min_frames=4, noise_levels="frame",
                       history_noise=0.05, frame_embedding="none", preset="DiT-M/4", depth=6, mlp_conv=3,
                       mixer="pom", pom_rotary=3, pom_frame_memory="gated-decay", batch_size=batch, lr=5e-4,
                       warmup_steps=100, steps=10**6, sample_every=0, checkpoint_every=10**6, progress=False,
                       tensorboard=False, num_threads=1, seed=0, out=out, **kw)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs --steps steps of every variant")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rollout", type=float, default=0.5, help="--history-rollout level of the third variant")
    p.add_argument("--out", default="benchmarks/results/history_step_cpu", help="path stem of the .md and .json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    VARIANTS["next + rollout"]["history_rollout"] = args.rollout
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VARIANTS.items():
            run = prepare(recipe(str(Path(tmp) / name.replace(" ", "")), args.batch, **kw))
            build(run)
            run.step = 200  # past the warm-up
            train_step(run)  # warm-up step
            runs[name] = run
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            first = 300 + r * args.steps
            for name, run in runs.items():
                run.step = first  # the same clips and prefixes for every variant
                t0 = time.process_time()
                for _ in range(args.steps):
                    train_step(run)
                times[name].append((time.process_time() - t0) / args.steps)
    medians = {name: statistics.median(v) for name, v in times.items()}
    base = medians["all"]
    command = " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv))
    lines = ["# Training-step cost by what the step trains (long-video recipe, CPU)", "",
             f"- command: `{command}`",
             f"- date: {datetime.date.today().isoformat()}; machine: {machine()}",
             f"- batch {args.batch}, one thread, {args.rounds} rounds of {args.steps} steps per variant in turns; "
             "CPU seconds per step (process time), median over rounds", "",
             "| variant | s/step | ratio to all |", "|---|---:|---:|"]
    lines += [f"| {name} | {medians[name]:.3f} | {medians[name] / base:.2f} |" for name in VARIANTS]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine(), "batch": args.batch,
                                                    "rounds": args.rounds, "steps": args.steps,
                                                    "seconds_per_step": times, "median": medians}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

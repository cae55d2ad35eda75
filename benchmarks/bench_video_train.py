"""Training-step time of the video DiT of experiments/compare_video.sh: PoM vs attention, with
and without spatial blocks (``--frame-local-every``), measured in one run.

Each variant is the comparison's model (DiT-M/4 with 6 blocks, width 128; 8 frames of 32x32,
512 tokens per clip; PoM with 4 gate heads and MLP ratio 3, attention with MLP ratio 4) and
one training step is forward, backward and an AdamW update on a batch of clips (float32,
as `polymixer train` on a CPU). The variants run in turns (round robin, after a warm-up), so
a change of the machine's speed during the run hits them alike; the table gives the median
and the ratio to PoM without spatial blocks. Output (table and JSON) with the command, date
and machine goes to ``benchmarks/results/``.

    python benchmarks/bench_video_train.py                       # batch 16, 1 thread, 8 rounds
    python benchmarks/bench_video_train.py --rounds 2 --batch 2 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import machine  # benchmarks/_common.py

from polymixer.models import VideoDiT, VideoDiTConfig
from polymixer.models.mixers import legacy_frame_local_pattern


def make_model(mixer: str, frame_local_every: int, frames: int) -> VideoDiT:
    torch.manual_seed(0)
    config = VideoDiTConfig(image_size=32, in_channels=1, patch_size=4, width=128, depth=6, heads=4,
                            mlp_ratio=3.0 if mixer == "pom" else 4.0,
                            mixer=legacy_frame_local_pattern(mixer, frame_local_every), pom_heads=4, frames=frames,
                            n_classes=10)
    return VideoDiT(config).train()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="pom:0,pom:2,attention:0,attention:2",
                   help="comma-separated mixer:frame_local_every")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "video_train_step_cpu"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = []
    for item in args.variants.split(","):
        mixer, _, k = item.partition(":")
        if mixer not in ("pom", "attention") or not k.isdigit():
            raise SystemExit(f"--variants: expected mixer:k items (mixer pom or attention), got {item!r}")
        variants.append((mixer, int(k)))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.frames, 1, 32, 32, generator=g)
    target = torch.randn(x.shape, generator=g)
    t = torch.rand(args.batch, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    runs = []
    for mixer, k in variants:
        model = make_model(mixer, k, args.frames)
        runs.append((mixer, k, model, torch.optim.AdamW(model.parameters(), lr=1e-4)))

    def step(model, opt) -> float:
        start = time.perf_counter()
        loss = (model(x, t, y) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    times = {(m, k): [] for m, k, _, _ in runs}
    for _, _, model, opt in runs:
        step(model, opt)  # warm-up
    for r in range(args.rounds):
        for mixer, k, model, opt in runs:
            times[(mixer, k)].append(step(model, opt))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m}:{k} {v[-1]:.2f}s" for (m, k), v in times.items()),
              flush=True)
    base = statistics.median(times[variants[0]])
    rows = [{"mixer": m, "frame_local_every": k, "parameters": sum(q.numel() for q in model.parameters()),
             "median_seconds": statistics.median(times[(m, k)]), "seconds": times[(m, k)],
             "ratio": statistics.median(times[(m, k)]) / base} for m, k, model, _ in runs]
    command = " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + (argv or sys.argv[1:]))
    today = datetime.date.today().isoformat()
    lines = [
        "# Video DiT training step: PoM vs attention, with and without spatial blocks (CPU)",
        "",
        f"- command: `{command}`, {today}",
        f"- machine: {machine()}, {args.threads} thread(s)",
        f"- model: the video DiT of experiments/compare_video.sh (DiT-M/4, 6 blocks, width 128), batch {args.batch} "
        f"clips of {args.frames} frames of 32x32 ({args.frames * 64} tokens per clip); one step = forward, backward, "
        f"AdamW; median of {args.rounds} steps per variant, variants in turns",
        "",
        f"| mixer | spatial blocks | parameters | s/step (median) | ratio to {variants[0][0]}:{variants[0][1]} |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        spatial = f"every {r['frame_local_every']}" if r["frame_local_every"] else "none"
        lines.append(f"| {r['mixer']} | {spatial} | {r['parameters'] / 1e6:.2f}M | {r['median_seconds']:.3f} | "
                     f"{r['ratio']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "date": today, "machine": machine(),
                                                    "threads": args.threads, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

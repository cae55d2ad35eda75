"""Memory of one long frame-by-frame generation: does anything grow with the frame count?

``bench_video.py`` compares generations of 8 to 128 frames, each in a fresh process. This
script runs one generation of many more frames (default 1,200, streamed out one by one, none
kept) from a video checkpoint (default the bundled ``video_demo``) and records the process's
resident memory (VmRSS) and its peak since the start (VmHWM) every ``--every`` frames, both
relative to the memory after a warm-up generation. A constant-size state means the curve goes
flat: any one-time growth (allocator pools, library caches) stops, and nothing grows per frame.

    python benchmarks/bench_stream_memory.py                        # 1,200 frames, 1 step each
    python benchmarks/bench_stream_memory.py --frames 300 --steps 2 --out /tmp/stream

Output (table, JSON) under ``benchmarks/results/`` with the command, date and machine. Linux only
(``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from _common import machine, reset_peak_rss, status_kb  # benchmarks/_common.py

from polymixer import bundled_checkpoint
from polymixer.sample import load_for_sampling
from polymixer.video import iter_video_frames


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    folder = Path(args.checkpoint).is_dir()  # a folder, else the name of a bundled checkpoint
    path = Path(args.checkpoint) if folder else bundled_checkpoint(args.checkpoint)
    model, pipeline = load_for_sampling(path, kind="video")
    labels = torch.arange(args.batch) % model.config.n_classes

    def frames(n: int):
        return iter_video_frames(model, pipeline, labels, frames=n, mode="sequential", steps=args.steps,
                                 cfg_scale=args.cfg, seed=0)

    with torch.no_grad():
        for _ in frames(args.warmup):  # thread pools, first allocations
            pass
        base = reset_peak_rss()
        points, t0 = [], time.perf_counter()
        for i, frame in enumerate(frames(args.frames), start=1):
            del frame  # streamed out: nothing keeps the finished frames
            if i % args.every == 0 or i in (1, 8, 16, 32, 64) or i == args.frames:
                points.append({"frame": i, "rss_mb": (status_kb("VmRSS") - base) / 1024,
                               "peak_mb": (status_kb("VmHWM") - base) / 1024})
                print(f"frame {i:>6}: rss {points[-1]['rss_mb']:+7.2f} MB, peak {points[-1]['peak_mb']:+7.2f} MB",
                      flush=True)
    name = str(path) if folder else f"the bundled {args.checkpoint}"
    return {"checkpoint": name, "points": points, "seconds": time.perf_counter() - t0}


def report(args, result: dict, command: str) -> str:
    points = result["points"]
    half = [p for p in points if p["frame"] >= args.frames // 2]
    growth = max(p["peak_mb"] for p in points) - max(p["peak_mb"] for p in points if p["frame"] < args.frames // 2)
    lines = [
        "# Memory of one long frame-by-frame generation",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {machine()}, {args.threads} thread(s)",
        f"- checkpoint: {result['checkpoint']}; batch {args.batch}, {args.steps} Euler step(s) per frame, "
        f"guidance {args.cfg}; {args.frames} frames in {result['seconds']:.0f} s, none kept",
        f"- memory relative to the process after a {args.warmup}-frame warm-up generation: resident (VmRSS) and "
        "its peak since (VmHWM)",
        "",
        "| frame | resident MB | peak MB |",
        "|---:|---:|---:|",
    ] + [f"| {p['frame']} | {p['rss_mb']:+.2f} | {p['peak_mb']:+.2f} |" for p in points] + [
        "",
        f"Peak over the second half of the generation (frames {args.frames // 2}-{args.frames}) minus the peak over "
        f"the first half: {growth:+.2f} MB; resident memory in the second half between "
        f"{min(p['rss_mb'] for p in half):+.2f} and {max(p['rss_mb'] for p in half):+.2f} MB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="video_demo", help="a bundled checkpoint name or a folder")
    p.add_argument("--frames", type=int, default=1200)
    p.add_argument("--every", type=int, default=100, help="record every this many frames (and at 1, 8, 16, 32, 64)")
    p.add_argument("--steps", type=int, default=1, help="Euler steps per frame")
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1: off)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2, help="frames of the warm-up generation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream_memory_cpu"))
    args = p.parse_args(argv)
    for name in ("frames", "every", "steps", "batch", "warmup", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}: expected a positive int, got {getattr(args, name)}")
    if args.frames < 4:
        raise SystemExit(f"--frames: expected at least 4 (two halves to compare), got {args.frames}")
    result = measure(args)
    command = " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv))
    text = report(args, result, command)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": command, **vars(args), **result}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()

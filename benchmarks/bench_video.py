"""Video generation against the number of frames: PoM frame by frame versus the rivals.

Four ways to generate a clip of F frames with the same video DiT size, measured in one
run, each (rival, F) in a fresh subprocess (time, and peak resident memory added by the
generation, Linux VmHWM after a reset):

* ``pom-sequential``: PoM, one frame at a time, with per-evaluation block states
  (``polymixer.video``, docs/design.md, section 4): memory and time per frame should not grow.
* ``pom-joint``: PoM, every frame denoised together (the whole clip in every call).
* ``attention-joint``: the same model with attention and the same frame-causal mask.
* ``attention-kv-cache``: attention generating frame by frame with a key-value cache per
  evaluation and block (``polymixer.nn.KVCache``, what autoregressive video diffusion with
  attention does): the cache, and the work per frame, grow with every frame.
* ``attention-rolling``: the same with a rolling cache of the last ``--window`` frames
  (``attention_window``, the standard for long autoregressive video): constant in size,
  like PoM's state, but each frame reads ``window`` frames of keys.

Before timing, the script checks that attention with the KV cache gives the joint
attention video, the rolling cache the joint video under the same window mask, and PoM
sequential the joint PoM video (same seed, float64, 3 frames; 5 frames for the rolling cache
with a window of 2 in the check, so that frames leave the window).
Weights are random (time and memory do not depend on training). The output (table, JSON,
plot) goes to ``benchmarks/results/`` with the command, date and machine.

    python benchmarks/bench_video.py                    # frames 8..128, the demo model's size
    python benchmarks/bench_video.py --frames 8,16 --steps 2 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import finish_log_plot, machine, pyplot, reset_peak_rss, status_kb  # benchmarks/_common.py

from polymixer.models import VideoDiT, VideoDiTConfig
from polymixer.models.mixers import legacy_frame_local_pattern
from polymixer.pipeline import SamplingConfig
from polymixer.video import iter_video_frames

MODEL_OPTIONS = ("clock", "steps", "batch", "image_size", "patch_size", "width", "depth", "heads", "threads", "frame_local_every",
                 "window", "mlp_conv", "pom_mixer", "pom_rotary", "pom_frame_memory", "frame_embedding", "noise_levels")
RIVALS = ("pom-sequential", "pom-joint", "attention-joint", "attention-kv-cache", "attention-rolling")


def make_model(mixer: str, args, dtype=torch.float32, window: int = 0) -> VideoDiT:
    """The benchmark's video DiT with ``mixer``; ``window``: attention's rolling window in frames (0: all).
    The PoM-only options (rotary positions, frame memory) apply to the PoM model; the MLP conv,
    the frame embedding and the noise levels to both."""
    torch.manual_seed(0)
    pom = mixer == "pom"
    if pom and getattr(args, "pom_mixer", "pom") != "pom":
        if getattr(args, "frame_local_every", 0):
            raise SystemExit("--pom-mixer and --frame-local-every: give the whole pattern in --pom-mixer")
        pattern = args.pom_mixer
    else:
        pattern = legacy_frame_local_pattern(mixer, getattr(args, "frame_local_every", 0))
    config = VideoDiTConfig(image_size=args.image_size, in_channels=1, patch_size=args.patch_size, width=args.width,
                            depth=args.depth, heads=args.heads, mlp_ratio=3.0 if pom else 4.0,
                            mixer=pattern,
                            pom_heads=1, frames=8, n_classes=10, attention_window=window,
                            mlp_conv=args.mlp_conv, pom_rotary=args.pom_rotary if pom else 0,
                            pom_frame_memory=args.pom_frame_memory if pom else "mean",
                            frame_embedding=args.frame_embedding, noise_levels=args.noise_levels)
    model = VideoDiT(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero adaLN so every block really works
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(dtype).eval()


def generate(rival: str, model: VideoDiT, frames: int, steps: int, batch: int):
    """An iterator over the frames of one generation by ``rival``."""
    labels = torch.arange(batch) % 10
    # frame by frame: PoM with its constant state, attention with the package's key-value cache
    mode = "joint" if rival.endswith("joint") else "sequential"
    return iter_video_frames(model, SamplingConfig(), labels, frames=frames, mode=mode, steps=steps, cfg_scale=1.0,
                             seed=0)


def check_equivalences(args) -> None:
    """KV-cached attention == joint attention (full and rolling window), PoM sequential == PoM joint (float64)."""
    # With one noise level per frame, frame-by-frame generation is another sampler than joint
    # generation (each new frame reads the finished ones at their own level), so the check runs
    # the same architecture with one noise level per clip, where the two must agree.
    small = argparse.Namespace(**{**vars(args), "depth": 2, "noise_levels": "clip"})
    for mixer, rival, window, frames in (("attention", "attention-kv-cache", 0, 3),
                                         ("attention", "attention-rolling", 2, 5), ("pom", "pom-sequential", 0, 3)):
        model = make_model(mixer, small, torch.float64, window)
        joint = torch.cat(list(generate("pom-joint" if mixer == "pom" else "attention-joint", model, frames, 2, 2)), 1)
        seq = torch.cat(list(generate(rival, model, frames, 2, 2)), 1)
        err = (seq.clamp(-1, 1) - joint.clamp(-1, 1)).abs().max().item()
        if err > 1e-9:
            raise SystemExit(f"{rival} differs from joint generation by {err:.2e}")
        print(f"check: {rival} == joint generation (max difference {err:.1e})", flush=True)


# ---------------------------------------------------------------- measurement
def child(args) -> None:
    """In a fresh process: one generation of ``args.frames_one`` frames by ``args.rival``."""
    torch.set_num_threads(args.threads)
    model = make_model("pom" if args.rival.startswith("pom") else "attention", args,
                       window=args.window if args.rival == "attention-rolling" else 0)
    # Warm-up, one sampling step: thread pools, first allocations, and for the joint rivals
    # the compiled chunk functions of PoM at this size (compiled from 8192 token rows on),
    # so the measurement sees generation only. Frame-by-frame rivals work at one frame's size.
    warm_frames = args.frames_one if args.rival.endswith("joint") else args.temporal_warmup
    with torch.no_grad():
        for _ in generate(args.rival, model, warm_frames, 1, args.batch):
            pass
    base = reset_peak_rss()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times, t0 = [], clock()
    with torch.no_grad():
        for frame in generate(args.rival, model, args.frames_one, args.steps, args.batch):
            now = clock()
            times.append(now - t0)
            t0 = now
            del frame  # streamed out: nothing keeps the finished frames
    peak = status_kb("VmHWM")
    print(json.dumps({"peak_mb": (peak - base) / 1024, "seconds": sum(times), "frame_seconds": times}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rivals", default=",".join(RIVALS))
    p.add_argument("--frames", default="8,16,32,64,128")
    p.add_argument("--steps", type=int, default=10, help="Euler steps per frame (no guidance)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--frame-local-every", type=int, default=0, help="spatial blocks 0, k, 2k, ... (0: none)")
    p.add_argument("--mlp-conv", type=int, default=0, help="depthwise conv side in every MLP, both mixers (0: none)")
    p.add_argument("--pom-mixer", default="pom", help="the PoM rivals' mixer pattern, e.g. 'pom + spacetime-local' "
                   "(PoM plus a softmax over each token's 5x5 neighbours in its frame and the frame before)")
    p.add_argument("--pom-rotary", type=int, default=0, help="PoM's rotary positions: 0 or 3 (frame, row, column)")
    p.add_argument("--pom-frame-memory", default="mean", help="PoM's cross-frame state: mean, decay, gated-decay, "
                   "window:W")
    p.add_argument("--frame-embedding", default="sincos", choices=("sincos", "none"))
    p.add_argument("--noise-levels", default="clip", choices=("clip", "frame"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed seconds (the default); cpu: CPU seconds of the generating process, all its "
                        "threads (the work done, much less sensitive to other jobs on a shared machine)")
    p.add_argument("--window", type=int, default=4, help="attention-rolling: frames kept in the rolling cache")
    p.add_argument("--max-joint-frames", type=int, default=128, help="skip joint rivals above this many frames")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "video_frames_cpu"))
    p.add_argument("--from-json", default=None, help="only write the report again from a JSON of an earlier run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rival", help=argparse.SUPPRESS)
    p.add_argument("--frames-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--temporal-warmup", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for k, v in saved.get("options", {}).items():  # the model of that run
            setattr(args, k, v)
        rows = saved["rows"]
        rivals = [r for r in RIVALS if any(row["rival"] == r for row in rows)]
        frames = sorted({row["frames"] for row in rows})
        return report(args, rows, rivals, frames, saved["command"])
    torch.set_num_threads(args.threads)
    rivals = [r for r in args.rivals.split(",") if r]
    for r in rivals:
        if r not in RIVALS:
            raise SystemExit(f"--rivals: unknown {r!r}; expected some of {RIVALS}")
    frame_counts = [int(f) for f in args.frames.split(",")]
    check_equivalences(args)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    for n in frame_counts:
        for r in rivals:
            if r.endswith("joint") and n > args.max_joint_frames:
                continue
            cmd = [sys.executable, __file__, "--child", "--rival", r, "--frames-one", str(n)] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k in MODEL_OPTIONS]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{r} at {n} frames failed")
            row = {"rival": r, "frames": n, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{r:>20} {n:>4} frames: {row['seconds'] / n * 1000:8.1f} ms/frame, "
                  f"peak +{row['peak_mb']:7.1f} MB", flush=True)
    report(args, rows, rivals, frame_counts, " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + sys.argv[1:]))


def options_line(args) -> str:
    """The model options other than the defaults, in words (empty for the plain models)."""
    words = []
    if getattr(args, "mlp_conv", 0):
        words.append(f"a {args.mlp_conv}x{args.mlp_conv} depthwise conv in every MLP (both mixers)")
    if getattr(args, "pom_mixer", "pom") != "pom":
        words.append(f"the PoM rivals' mixer {args.pom_mixer!r}")
    if getattr(args, "pom_rotary", 0):
        words.append(f"PoM with rotary positions over {args.pom_rotary} axes (attention without)")
    if getattr(args, "pom_frame_memory", "mean") != "mean":
        words.append(f"PoM's frame memory {args.pom_frame_memory}")
    if getattr(args, "frame_embedding", "sincos") != "sincos":
        words.append(f"frame embedding {args.frame_embedding}")
    if getattr(args, "noise_levels", "clip") != "clip":
        words.append(f"one noise level per {args.noise_levels}")
    return ("; " + ", ".join(words)) if words else ""


def report(args, rows, rivals, frame_counts, command) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    by = {(r["rival"], r["frames"]): r for r in rows}
    tokens = (args.image_size // args.patch_size) ** 2
    lines = [
        "# Video generation against the number of frames (CPU)",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {machine()}, {args.threads} thread(s)",
        f"- model: video DiT depth {args.depth}, width {args.width}, {args.heads} heads, patch {args.patch_size} on "
        f"{args.image_size}x{args.image_size} frames ({tokens} tokens per frame), batch {args.batch}, "
        f"{args.steps} Euler steps per frame, no guidance, float32, random weights"
        + options_line(args),
        "- ms/frame = the whole generation's time / frames"
        + (" (CPU seconds of the generating process, --clock cpu: the work done on a machine shared with "
           "other jobs)" if getattr(args, "clock", "wall") == "cpu" else "")
        + "; for the frame-by-frame rivals also the mean of the first 8 and of the last 8 frames of the same generation; peak = resident memory added by the generation "
        "(fresh process per cell, finished frames not kept)",
        "- checked first: attention-kv-cache == attention-joint, attention-rolling == attention-joint under the "
        "same window mask, and pom-sequential == pom-joint (float64"
        + (", the same models with one noise level per clip" if getattr(args, "noise_levels", "clip") != "clip" else "")
        + ")"
        + (f"; attention-rolling keeps the last {args.window} frames" if "attention-rolling" in rivals else ""),
        "",
        "| frames | " + " | ".join(f"{r} ms/frame{'' if r.endswith('joint') else ' (first 8 / last 8)'} | {r} peak MB"
                                    for r in rivals) + " |",
        "|---:|" + "---:|---:|" * len(rivals),
    ]
    for n in frame_counts:
        cells = []
        for r in rivals:
            row = by.get((r, n))
            if row is None:
                cells += ["(not run)", ""]
                continue
            mean = f"{row['seconds'] / n * 1000:.0f}"
            if not r.endswith("joint"):  # joint generation yields every frame at the end: no per-frame times
                first, last = row["frame_seconds"][:8], row["frame_seconds"][-8:]
                mean += f" ({sum(first) / len(first) * 1000:.0f} / {sum(last) / len(last) * 1000:.0f})"
            cells += [mean, f"{row['peak_mb']:.1f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    seq = [by[("pom-sequential", n)] for n in frame_counts if ("pom-sequential", n) in by]
    if len(seq) >= 2:
        ratio = seq[-1]["peak_mb"] / max(seq[0]["peak_mb"], 1e-9)
        times = seq[-1]["frame_seconds"]
        lines += ["", f"PoM sequential: peak at {seq[-1]['frames']} frames / at {seq[0]['frames']} frames = "
                  f"{ratio:.3f}; within the {seq[-1]['frames']}-frame generation, last 8 frames / first 8 frames "
                  f"= {sum(times[-8:]) / max(sum(times[:8]), 1e-9):.2f} (time per frame)"]
    largest = frame_counts[-1]
    if ("pom-sequential", largest) in by:
        base = by[("pom-sequential", largest)]
        for r in rivals[1:]:
            if (r, largest) in by:
                o = by[(r, largest)]
                lines.append(f"At {largest} frames, {r} / pom-sequential: time {o['seconds'] / base['seconds']:.1f}x, "
                             f"peak memory {o['peak_mb'] / max(base['peak_mb'], 1e-9):.1f}x")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    options = {k: getattr(args, k) for k in MODEL_OPTIONS}
    out.with_suffix(".json").write_text(json.dumps({"command": command, "options": options, "rows": rows}, indent=1)
                                        + "\n")
    print("\n".join(lines))
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rivals:
        pts = [by[(r, n)] for n in frame_counts if (r, n) in by]
        xs = [q["frames"] for q in pts]
        axes[0].plot(xs, [q["seconds"] / q["frames"] * 1000 for q in pts], marker="o", label=r)
        axes[1].plot(xs, [max(q["peak_mb"], 0.1) for q in pts], marker="o", label=r)
    for ax, title in zip(axes, ["time per frame (ms)", "peak memory added (MB)"]):
        ax.set_title(title)
    finish_log_plot(fig, axes, "frames", out.with_suffix(".png"))


if __name__ == "__main__":
    main()

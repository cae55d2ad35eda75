"""PoM-DiT against attention-DiT as images grow: one forward pass, one training step and one
sampling run against the number of tokens, both mixers in the same run.

The two models are the PoM and the attention version of the same size preset (the PoM one
has the paper's smaller MLP, parameters within 15%); the number of tokens N is
(image side / patch size)^2, made larger by sampling larger inputs of the same network
(positions are sin-cos, so any size works). Times are medians of interleaved repeats
(PoM, attention, PoM, ...), in elapsed seconds or, with ``--clock cpu`` on a machine shared with
other jobs, in CPU seconds of the process (the work done); peak memory is the resident memory added by the measured call
in a fresh process per (mixer, N, measurement). Output (table, JSON, plot) in
``benchmarks/results/`` with the command, date and machine.

    python benchmarks/bench_dit_scaling.py                       # N = 256 .. 16384, DiT-M/2, CPU
    python benchmarks/bench_dit_scaling.py --tokens 256,1024 --repeats 1 --out /tmp/quick
    python benchmarks/bench_dit_scaling.py --device cuda --dtype bfloat16 --preset DiT-B/2 \
        --tokens 256,1024,4096,16384,65536 --out benchmarks/results/dit_scaling_h200   # a GPU

``--variants "NAME=PATTERN|FIELD=VALUE|...;..."`` adds models with other mixer patterns or
config fields (e.g. ``pom_conv=pom|mlp_conv=3;pom_rotary=pom|pom_rotary=2;hybrid=pom + attention``),
timed in the same interleaved run, with a second table of each variant's time over PoM's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import finish_log_plot, machine, pyplot, reset_peak_rss, status_kb  # benchmarks/_common.py

from polymixer.diffusion import FlowMatching, sample
from polymixer.models import DiT, dit_config

MIXERS = ("pom", "attention")
WHAT = ("forward", "train_step", "sampling")


def parse_variants(text: str | None) -> dict[str, tuple[str, dict]]:
    """``{name: (mixer pattern, config overrides)}`` of ``--variants``."""
    out = {}
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        name, sep, spec = item.partition("=")
        pattern, *fields = spec.split("|")
        if not sep or not name.strip() or name.strip() in MIXERS or not pattern.strip():
            raise SystemExit(f"--variants: expected NAME=PATTERN|FIELD=VALUE..., got {item!r}")
        overrides = {}
        for field in fields:
            key, _, value = field.partition("=")
            overrides[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
        out[name.strip()] = (pattern.strip(), overrides)
    return out


def build(mixer: str, args) -> DiT:
    torch.manual_seed(0)
    pattern, overrides = parse_variants(args.variants).get(mixer, (mixer, {}))
    overrides = {"mlp_conv": 0, "pom_rotary": 0, **overrides}  # plain mixers unless a variant adds them
    config = dit_config(args.preset, mixer=pattern, image_size=args.patch * 16, in_channels=args.channels,
                        n_classes=10, **overrides)
    model = DiT(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero adaLN: every block does its work
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(args.device)


def side_for(tokens: int, patch: int) -> int:
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise SystemExit(f"--tokens: {tokens} is not a square number")
    return side * patch


def make_call(what: str, model: DiT, tokens: int, args):
    """A function running one ``what`` on a batch of ``args.batch`` images of ``tokens`` tokens."""
    side = side_for(tokens, model.config.patch_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.channels, side, side, generator=g).to(args.device)
    y = torch.arange(args.batch, device=args.device) % 10
    t = torch.full((args.batch,), 0.5, device=args.device)
    inner = _call(what, model, x, y, t, args)
    if args.dtype == "float32":
        return inner

    def call():  # mixed precision: the matrix products in args.dtype, the weights in float32
        with torch.autocast(args.device.split(":")[0], dtype=getattr(torch, args.dtype)):
            inner()
    return call


def _call(what: str, model: DiT, x, y, t, args):
    if what == "forward":
        model.eval()

        def call():
            with torch.no_grad():
                model(x, t, y)
    elif what == "train_step":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        objective = FlowMatching()

        def call():
            opt.zero_grad(set_to_none=True)
            objective.loss(model, x, y).backward()
            opt.step()
    else:
        model.eval()

        def call():
            sample(model, x, model.condition(y), objective=FlowMatching(), steps=args.sampling_steps,
                   cfg_scale=args.cfg)
    return call


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args) -> None:
    """Fresh process: peak memory added by one ``args.what`` at ``args.n`` tokens (after a warm-up)."""
    torch.set_num_threads(args.threads)
    model = build(args.mixer, args)
    call = make_call(args.what, model, args.n, args)
    call()  # warm-up: optimizer states, thread pools, compiled chunk functions
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        _sync(args.device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = reset_peak_rss()
        call()
        peak = (status_kb("VmHWM") - base) / 1024
    print(json.dumps({"peak_mb": peak}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="256,1024,4096,16384")
    p.add_argument("--preset", default="DiT-M/2", help="size preset (PoM and attention versions)")
    p.add_argument("--channels", type=int, default=4, help="input channels (4 = SD-VAE latents)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sampling-steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating a cell past this")
    p.add_argument("--what", default=",".join(WHAT))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="float32, or autocast to bfloat16/float16 (what a GPU run should use)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed seconds (the default); cpu: CPU seconds of this process, all its threads "
                        "(CPU only): the work done, much less sensitive to other jobs on a shared machine")
    p.add_argument("--variants", default=None, help="more models: NAME=PATTERN|FIELD=VALUE|...;... (see above)")
    p.add_argument("--out", default=None, help="path prefix (default benchmarks/results/dit_scaling_<device>)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mixer", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.patch = int(args.preset.split("/")[1])
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu: CPU seconds measure CPU work; on --device cuda use the wall clock")
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    whats = [w for w in args.what.split(",") if w]
    tokens = [int(n) for n in args.tokens.split(",")]
    rivals = MIXERS + tuple(parse_variants(args.variants))
    models = {m: build(m, args) for m in rivals}
    params = {m: models[m].num_parameters() for m in rivals}
    print(f"parameters: PoM {params['pom'] / 1e6:.2f}M, attention {params['attention'] / 1e6:.2f}M", flush=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    for n in tokens:
        for what in whats:
            calls = {m: make_call(what, models[m], n, args) for m in rivals}
            times = {m: [] for m in rivals}
            for m in rivals:  # warm-up
                calls[m]()
            for _ in range(args.repeats):
                for m in rivals:
                    if sum(times[m]) > args.max_seconds:
                        continue
                    _sync(args.device)
                    t0 = clock()
                    calls[m]()
                    _sync(args.device)
                    times[m].append(clock() - t0)
            for m in rivals:
                row = {"mixer": m, "tokens": n, "what": what, "seconds": statistics.median(times[m]),
                       "runs": len(times[m])}
                if not args.no_memory:
                    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mixer", m, "--n", str(n),
                           "--what", what, "--preset", args.preset, "--channels", str(args.channels),
                           "--batch", str(args.batch), "--sampling-steps", str(args.sampling_steps),
                           "--cfg", str(args.cfg), "--threads", str(args.threads), "--device", args.device,
                           "--dtype", args.dtype] + (["--variants", args.variants] if args.variants else [])
                    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                    row["peak_mb"] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    report(args, rows, whats, tokens, params)


def report(args, rows, whats, tokens, params) -> None:
    out = Path(args.out or Path(__file__).parent / "results" / f"dit_scaling_{args.device.split(':')[0]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    by = {(r["mixer"], r["tokens"], r["what"]): r for r in rows}
    command = " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + sys.argv[1:])
    dev = machine() if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    lines = [
        "# PoM-DiT vs attention-DiT against the number of tokens",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {dev}, {args.threads} thread(s), device {args.device}",
        f"- models: {args.preset} with PoM ({params['pom'] / 1e6:.2f}M parameters, k=2, e=2, MLP ratio 3) and with "
        f"attention ({params['attention'] / 1e6:.2f}M, SDPA, MLP ratio 4); {args.channels}-channel inputs, batch "
        f"{args.batch}, " + ("float32" if args.dtype == "float32" else f"{args.dtype} autocast"),
        f"- forward = one no-grad forward; train_step = flow-matching loss, backward, AdamW step; sampling = "
        f"{args.sampling_steps} Euler steps" + (f" with guidance {args.cfg} (doubled batch)" if args.cfg != 1 else
                                               " without guidance"),
        ("- time = median of interleaved repeats" + (" of CPU seconds (all threads of the process, --clock cpu: "
         "the work done, not the latency; robust to other jobs on the machine)" if args.clock == "cpu" else "")
         + "; peak = memory added by one call in a fresh process "
         "(resident memory on CPU, allocated memory on CUDA); ratio = attention / PoM (> 1: PoM is cheaper)"),
        "",
        "| tokens | what | PoM s | attention s | time ratio | PoM peak MB | attention peak MB | memory ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in tokens:
        for w in whats:
            a, b = by.get(("pom", n, w)), by.get(("attention", n, w))
            if a is None or b is None:
                continue
            mem = ("", "", "")
            if "peak_mb" in a:
                mem = (f"{a['peak_mb']:.0f}", f"{b['peak_mb']:.0f}", f"{b['peak_mb'] / max(a['peak_mb'], 1e-9):.2f}")
            lines.append(f"| {n} | {w} | {a['seconds']:.3f} | {b['seconds']:.3f} | "
                         f"{b['seconds'] / a['seconds']:.2f} | {mem[0]} | {mem[1]} | {mem[2]} |")
    for w in whats:
        ratios = [(n, by[("attention", n, w)]["seconds"] / by[("pom", n, w)]["seconds"]) for n in tokens
                  if ("pom", n, w) in by and ("attention", n, w) in by]
        # the crossover: the smallest size from which PoM is faster at every measured size
        faster = [n for i, (n, _) in enumerate(ratios) if all(r > 1 for _, r in ratios[i:])]
        cross = f"PoM faster from {faster[0]} tokens on" if faster else "PoM not faster at the largest size"
        if ratios:
            lines.append(f"\n{w}: {cross}; at {ratios[-1][0]} tokens attention takes {ratios[-1][1]:.1f}x PoM's time.")
    variants = [m for m in params if m not in MIXERS]
    if variants:
        lines += ["", "Variants (same run, same inputs): time over PoM's", "",
                  "| tokens | what | " + " | ".join(f"{v} s | {v} / PoM" for v in variants) + " |",
                  "|---:|---|" + "---:|---:|" * len(variants)]
        for n in tokens:
            for w in whats:
                if ("pom", n, w) not in by:
                    continue
                base = by[("pom", n, w)]["seconds"]
                cells = [f"{by[(v, n, w)]['seconds']:.3f} | {by[(v, n, w)]['seconds'] / base:.2f}"
                         if (v, n, w) in by else " | " for v in variants]
                lines.append(f"| {n} | {w} | " + " | ".join(cells) + " |")
        if any("peak_mb" in r for r in rows if r["mixer"] in variants):
            lines += ["", "Variants: peak memory (MB) and its ratio over PoM's", "",
                      "| tokens | what | PoM MB | " + " | ".join(f"{v} MB | {v} / PoM" for v in variants) + " |",
                      "|---:|---|---:|" + "---:|---:|" * len(variants)]
            for n in tokens:
                for w in whats:
                    base = by.get(("pom", n, w), {}).get("peak_mb")
                    if base is None:
                        continue
                    cells = [f"{by[(v, n, w)]['peak_mb']:.0f} | {by[(v, n, w)]['peak_mb'] / max(base, 1e-9):.2f}"
                             if "peak_mb" in by.get((v, n, w), {}) else " | " for v in variants]
                    lines.append(f"| {n} | {w} | {base:.0f} | " + " | ".join(cells) + " |")
        lines.append("\n" + "; ".join(f"{v}: {params[v] / 1e6:.2f}M parameters" for v in variants)
                     + f" (`--variants \"{args.variants}\"`)")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "params": params, "rows": rows}, indent=1))
    print("\n".join(lines))
    plt = pyplot()
    if plt is None:
        return
    memory = {m: [by[(m, n, "train_step")] for n in tokens if "peak_mb" in by.get((m, n, "train_step"), {})]
              for m in MIXERS}
    panels = len(whats) + (1 if any(memory.values()) else 0)  # no memory panel without memory numbers
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    axes = list(axes[0])
    for ax, w in zip(axes, whats):
        for m in MIXERS:
            pts = [by[(m, n, w)] for n in tokens if (m, n, w) in by]
            ax.plot([q["tokens"] for q in pts], [q["seconds"] for q in pts], marker="o", label=m)
        ax.set_title(f"{w} (s)")
    if panels > len(whats):
        for m in MIXERS:
            axes[-1].plot([q["tokens"] for q in memory[m]], [max(q["peak_mb"], 0.1) for q in memory[m]], marker="o",
                          label=m)
        axes[-1].set_title("train_step peak memory (MB)")
    finish_log_plot(fig, axes, "tokens", out.with_suffix(".png"))


if __name__ == "__main__":
    main()

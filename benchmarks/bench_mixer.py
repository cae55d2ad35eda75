"""PoM versus attention, side by side in one run: time, peak memory, saved activations.

Rivals (all at the same width D, batch B, on the same inputs):
  pom-product      PolynomialMixer, variant="product" (degree 2, expand 2)
  pom-power        PolynomialMixer, variant="power"   (degree 2, expand 2)
  sdpa             MultiHeadAttention (PyTorch scaled_dot_product_attention)
  floor-product    the product mixer's own projections alone (its GEMM floor)
  floor-power      the power mixer's own projections alone
``pom-product:fused`` / ``:lean`` / ``:autograd`` / ``:compiled`` pick the mixer's backward
implementation (``:compiled`` = ``torch.compile`` of the autograd form).

For every N: median milliseconds of forward and of forward+backward over --repeats runs,
interleaved between rivals; peak resident memory added by one forward+backward, measured
in a fresh subprocess per (rival, N) (ru_maxrss); bytes of tensors saved for backward
(torch.autograd.graph.saved_tensors_hooks, parameters excluded, shared storages once).

--threads takes a list (e.g. 1,2): each thread count is measured in its own fresh
process, one after the other (torch.compile bakes the thread count into the kernels it
makes), and gets its own table, with the ratios to the floor from that same process; the
load average before and after each is recorded (on a shared machine other processes
take cores, which makes multithreaded timings pessimistic: compare ratios, not times).

    python benchmarks/bench_mixer.py --out benchmarks/results/mixer_cpu
writes mixer_cpu.md (table + command + date + machine) and mixer_cpu.json, and with
--plot a PNG of time and memory versus N on log axes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import _common  # benchmarks/_common.py (this script's folder is on sys.path)
from _common import GemmFloor, reset_peak_rss, status_kb
from polymixer import MultiHeadAttention, PolynomialMixer
from polymixer.ops import MixerSettings


def make_rival(name: str, dim: int, heads: int) -> nn.Module:
    variant = "power" if "power" in name else "product"
    if name.startswith("pom-"):
        impl = name.split(":")[1] if ":" in name else None
        mixer = PolynomialMixer(dim, degree=2, expand=2, variant=variant)
        if impl == "compiled":  # inductor on the plain autograd form (it fuses the element-wise work)
            mixer.implementation = "autograd"
            return torch.compile(mixer)
        if impl is not None:
            mixer.implementation = impl
        return mixer
    if name.startswith("floor-"):
        return GemmFloor(PolynomialMixer(dim, degree=2, expand=2, variant=variant))
    if name == "sdpa":
        return MultiHeadAttention(dim, heads=heads)
    raise ValueError(f"unknown rival {name!r}")


def mode_kwargs(mode: str, n: int) -> dict:
    if mode == "full":
        return {}
    if mode == "causal":
        return {"causal": True}
    if mode == "block":
        return {"block_size": max(1, n // 16)}
    raise ValueError(f"unknown mode {mode!r}")


def run_once(module, x, kwargs, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        y = module(x, **kwargs)
        y.backward(torch.ones_like(y))
    else:
        with torch.no_grad():
            module(x, **kwargs)
    return (time.perf_counter() - start) * 1e3


def saved_bytes(module, x, kwargs) -> int:
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x, **kwargs)
    y.sum().backward()
    return sum(seen.values())


def memory_child(args) -> None:
    """Runs in a fresh process: peak RSS added by one forward+backward."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    module = make_rival(args.rival, args.dim, args.heads)
    x = torch.randn(args.batch, args.n, args.dim, requires_grad=True)
    kwargs = mode_kwargs(args.mode, args.n)
    grad = torch.ones(args.batch, args.n, args.dim)
    # One call of the same size first: parameter gradients, thread pools and compiled
    # kernels (torch.compile'd rivals, and the mixer's chunk functions from 8192 rows on)
    # are made outside the measurement, which then sees activations and temporaries
    # only. The parent sets MALLOC_MMAP_THRESHOLD_ so that freed large blocks go back to
    # the system and the measured call cannot reuse the warm-up's memory unseen.
    warm = x.detach().clone().requires_grad_()
    module(warm, **kwargs).backward(grad)
    del warm
    base = reset_peak_rss()
    y = module(x, **kwargs)
    y.backward(grad)
    peak = status_kb("VmHWM")
    print(json.dumps({"peak_mb": (peak - base) / 1024}))


def machine(threads=None) -> str:
    threads = ",".join(map(str, threads)) if threads else str(torch.get_num_threads())
    return f"{_common.machine()}, {threads} threads"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rivals", default="pom-product,pom-power,sdpa,floor-product,floor-power")
    p.add_argument("--ns", default="256,1024,2048,4096,8192,16384")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="full", choices=["full", "causal", "block"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-attention-n", type=int, default=16384, help="skip sdpa above this N (time)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop repeating a rival past this")
    p.add_argument("--threads", default=str(torch.get_num_threads()),
                   help="thread count, or a comma-separated list measured one after the other (e.g. 1,2)")
    p.add_argument("--rows-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", default=None, help="path prefix for .md/.json (and .png with --plot)")
    p.add_argument("--plot", action="store_true")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rival", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threads = [int(v) for v in str(args.threads).split(",")]
    if any(t < 1 for t in threads):
        raise ValueError(f"--threads: expected positive thread counts, got {args.threads!r}")
    if args.memory_child:
        args.threads = threads[0]
        memory_child(args)
        return
    rivals = args.rivals.split(",")
    ns = [int(v) for v in args.ns.split(",")]
    if len(threads) == 1 and not args.rows_child:
        rows = measure(args, threads[0], rivals, ns)
    elif args.rows_child:
        for row in measure(args, threads[0], rivals, ns):
            print("ROW " + json.dumps(row), flush=True)
        return
    else:
        rows = []
        for t in threads:
            cmd = [sys.executable, os.path.abspath(__file__), "--rows-child", "--threads", str(t),
                   "--rivals", args.rivals, "--ns", args.ns, "--dim", str(args.dim), "--heads", str(args.heads),
                   "--batch", str(args.batch), "--mode", args.mode, "--repeats", str(args.repeats),
                   "--max-attention-n", str(args.max_attention_n), "--max-seconds", str(args.max_seconds)]
            if args.no_memory:
                cmd.append("--no-memory")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                if line.startswith("ROW "):
                    rows.append(json.loads(line[4:]))
                    print(line[4:], flush=True)
    report(args, rows, rivals, ns, threads)


def measure(args, threads: int, rivals, ns) -> list[dict]:
    """Time every rival at every N with ``threads`` threads (this process)."""
    torch.set_num_threads(threads)
    rows = []
    for n in ns:
        torch.manual_seed(0)
        active = [r for r in rivals if not (r == "sdpa" and n > args.max_attention_n)]
        modules = {r: make_rival(r, args.dim, args.heads) for r in active}
        x = torch.randn(args.batch, n, args.dim, requires_grad=True)
        kwargs = mode_kwargs(args.mode, n)
        times = {(r, b): [] for r in active for b in (False, True)}
        load_before = os.getloadavg()[0]
        for r in active:  # warm-up
            run_once(modules[r], x, kwargs, False)
            run_once(modules[r], x, kwargs, True)
        for _ in range(args.repeats):
            for r in active:
                for b in (False, True):
                    if sum(times[(r, b)]) / 1e3 > args.max_seconds:
                        continue
                    times[(r, b)].append(run_once(modules[r], x, kwargs, b))
        load_after = os.getloadavg()[0]
        for r in active:
            row = {
                "rival": r, "n": n, "threads": threads, "load_before": load_before, "load_after": load_after,
                "dim": args.dim, "batch": args.batch, "mode": args.mode,
                "fwd_ms": statistics.median(times[(r, False)]),
                "fwd_bwd_ms": statistics.median(times[(r, True)]),
                "runs": len(times[(r, True)]),
                "saved_mb": saved_bytes(modules[r], x, kwargs) / 2**20,
            }
            if not args.no_memory:
                cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", "--rival", r, "--n", str(n),
                       "--dim", str(args.dim), "--heads", str(args.heads), "--batch", str(args.batch),
                       "--mode", args.mode, "--threads", str(threads)]
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # see memory_child
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                row["peak_mb"] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
            rows.append(row)
            if not args.rows_child:
                print(json.dumps(row), flush=True)
    return rows


def _floor_of(rival: str) -> str | None:
    """The GEMM floor rival of the same variant as ``rival`` (None for sdpa/floors)."""
    if not rival.startswith("pom-"):
        return None
    return "floor-power" if rival.startswith("pom-power") else "floor-product"


def report(args, rows, rivals, ns, threads=None) -> None:
    threads = threads or sorted({r.get("threads", 1) for r in rows})
    by = {(r["rival"], r["n"], r.get("threads", threads[0])): r for r in rows}
    settings = MixerSettings.from_env()
    compile_setting = settings.compile
    lines = [
        f"# Mixer benchmark ({args.mode} mode)",
        "",
        f"- command: `{'POLYMIXER_COMPILE=' + compile_setting + ' ' if compile_setting != 'auto' else ''}"
        f"python benchmarks/bench_mixer.py {' '.join(sys.argv[1:])}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine(threads)}",
        f"- D={args.dim}, batch={args.batch}, sdpa heads={args.heads}, degree 2, expand 2, float32; "
        f"median of up to {args.repeats} interleaved runs",
        f"- element-wise work of the fused/lean chunks: POLYMIXER_COMPILE={compile_setting} ("
        + {"always": "compiled", "never": "eager"}.get(
            compile_setting, "auto: eager below "
            + str(settings.compile_min_rows) + " token rows, compiled from there")
        + ")",
        "- / floor = time over the GEMM floor of the same variant (floor-product or floor-power), same run "
        "(same process and thread count)",
        "- peak = resident memory added by one forward+backward in a fresh process; "
        "saved = bytes of tensors kept for backward (parameters excluded)",
        "- load = the 1-minute load average before -> after each N's timings (other processes on the machine)",
    ]
    for t in threads:
        lines += [
            "",
            f"## {t} thread{'s' if t > 1 else ''}",
            "",
            "| N | rival | fwd ms | fwd+bwd ms | fwd / floor | fwd+bwd / floor | sdpa / rival (fwd+bwd) | saved MB | "
            "peak MB | load |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for n in ns:
            for r in rivals:
                row = by.get((r, n, t))
                if row is None:
                    continue
                floor = by.get((_floor_of(r), n, t))
                sdpa = by.get(("sdpa", n, t))
                fwd_floor = f"{row['fwd_ms'] / floor['fwd_ms']:.2f}" if floor else ""
                ratio_floor = f"{row['fwd_bwd_ms'] / floor['fwd_bwd_ms']:.2f}" if floor else ""
                ratio_sdpa = f"{sdpa['fwd_bwd_ms'] / row['fwd_bwd_ms']:.2f}" if sdpa else ""
                peak = f"{row['peak_mb']:.0f}" if "peak_mb" in row else ""
                load = f"{row['load_before']:.2f} -> {row['load_after']:.2f}" if "load_before" in row else ""
                lines.append(
                    f"| {n} | {r} | {row['fwd_ms']:.1f} | {row['fwd_bwd_ms']:.1f} | {fwd_floor} | {ratio_floor} | "
                    f"{ratio_sdpa} | {row['saved_mb']:.1f} | {peak} | {load} |"
                )
    if len(threads) > 1:
        lines += ["", "## fwd+bwd / floor by thread count", "",
                  "| N | rival | " + " | ".join(f"{t} thr" for t in threads) + " |",
                  "|---:|---|" + "---:|" * len(threads)]
        for n in ns:
            for r in rivals:
                if _floor_of(r) is None:
                    continue
                cells = []
                for t in threads:
                    row, floor = by.get((r, n, t)), by.get((_floor_of(r), n, t))
                    cells.append(f"{row['fwd_bwd_ms'] / floor['fwd_bwd_ms']:.2f}" if row and floor else "")
                if any(cells):
                    lines.append(f"| {n} | {r} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        for suffix, content in ((".md", text), (".json", json.dumps(rows, indent=1))):
            tmp = args.out + suffix + ".tmp"
            with open(tmp, "w") as f:
                f.write(content)
            os.replace(tmp, args.out + suffix)
        if args.plot:
            plot(args, [r for r in rows if r.get("threads", threads[0]) == threads[0]], rivals)


def plot(args, rows, rivals) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for r in rivals:
        pts = sorted((row["n"], row) for row in rows if row["rival"] == r)
        if not pts:
            continue
        n = [p[0] for p in pts]
        axes[0].plot(n, [p[1]["fwd_ms"] for p in pts], marker="o", label=r)
        axes[1].plot(n, [p[1]["fwd_bwd_ms"] for p in pts], marker="o", label=r)
        if all("peak_mb" in p[1] for p in pts):
            axes[2].plot(n, [max(p[1]["peak_mb"], 1e-1) for p in pts], marker="o", label=r)
    for ax, title in zip(axes, ["forward (ms)", "forward+backward (ms)", "peak memory added (MB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"PoM vs attention, D={args.dim}, {args.mode} mode, {machine()}", fontsize=9)
    fig.tight_layout()
    tmp = args.out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, args.out + ".png")


if __name__ == "__main__":
    main()

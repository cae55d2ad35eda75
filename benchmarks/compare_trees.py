"""Time the mixer of two source trees (e.g. a commit and its parent) in one run, interleaved.

Two versions of the package cannot share a process (they register the same operators), so
every round runs one fresh process per tree, alternating trees, and each process times every
rival (interleaved, after a warm-up call that also compiles what is compiled). The table
gives, per (rival, N), the median over rounds of each process's median time, and the ratio
of each tree to the first. Use ``git worktree add /tmp/base <commit>`` for the old tree.

    python benchmarks/compare_trees.py --trees /tmp/base,. --ns 4096,16384 --threads 1 \\
        --out benchmarks/results/refactor_vs_base_cpu.md
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

RIVALS = "pom-product:fused,pom-product:lean,pom-power:fused,pom-power:lean"


def child(args) -> None:
    sys.path.insert(0, os.path.abspath(args.tree))
    import torch

    from polymixer import PolynomialMixer

    torch.set_num_threads(args.threads)
    results = {}
    for n in [int(v) for v in args.ns.split(",")]:
        torch.manual_seed(0)
        mixers = {}
        for name in args.rivals.split(","):
            base, _, impl = name.partition(":")
            mixers[name] = PolynomialMixer(args.dim, degree=2, expand=2, variant=base.split("-")[1],
                                           implementation=impl or "fused")
        x = torch.randn(args.batch, n, args.dim, requires_grad=True)
        grad = torch.ones(args.batch, n, args.dim)
        kwargs = {"causal": True} if args.mode == "causal" else {"block_size": max(1, n // 16)} if args.mode == "block" else {}

        def fwd_bwd(m):
            start = time.perf_counter()
            m(x, **kwargs).backward(grad)
            return (time.perf_counter() - start) * 1e3

        def fwd(m):
            start = time.perf_counter()
            with torch.no_grad():
                m(x, **kwargs)
            return (time.perf_counter() - start) * 1e3

        for m in mixers.values():  # warm-up (and compile)
            fwd(m)
            fwd_bwd(m)
        times = {(name, kind): [] for name in mixers for kind in ("fwd", "fwd_bwd")}
        for _ in range(args.repeats):
            for name, m in mixers.items():
                times[(name, "fwd")].append(fwd(m))
                times[(name, "fwd_bwd")].append(fwd_bwd(m))
        for (name, kind), ts in times.items():
            results[f"{name}|{n}|{kind}"] = statistics.median(ts)
    print("RESULT " + json.dumps(results), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", help="comma-separated source trees; ratios are to the first")
    p.add_argument("--rivals", default=RIVALS)
    p.add_argument("--ns", default="4096,16384")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="full", choices=["full", "causal", "block"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="processes per tree, alternating trees")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per rival in each process")
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    if not args.trees:
        p.error("--trees is required")
    trees = args.trees.split(",")
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for r in range(args.rounds):
        for tree in (trees if r % 2 == 0 else trees[::-1]):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--tree", tree]
            for opt in ("rivals", "ns", "dim", "batch", "mode", "threads", "repeats"):
                cmd += [f"--{opt}", str(getattr(args, opt))]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
            if out.returncode != 0:
                raise SystemExit(f"{tree}: {out.stderr[-3000:]}")
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
            runs[tree].append(json.loads(line[len("RESULT "):]))
            print(f"round {r + 1} {tree}: done", flush=True)
    keys = list(runs[trees[0]][0])
    med = {t: {k: statistics.median(run[k] for run in runs[t]) for k in keys} for t in trees}
    spread = {t: {k: (min(run[k] for run in runs[t]), max(run[k] for run in runs[t])) for k in keys} for t in trees}
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"# Mixer time, {len(trees)} source trees in one run ({args.mode} mode)",
        "",
        f"- command: `python benchmarks/compare_trees.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} logical cores (shared), torch {torch.__version__}, {args.threads} thread(s)",
        f"- D={args.dim}, batch={args.batch}, degree 2, expand 2, float32, default settings "
        f"(compile=auto: eager below 8192 token rows, compiled from there)",
        f"- {args.rounds} rounds, trees alternating, one fresh process per tree and round; each process: "
        f"median of {args.repeats} interleaved calls per rival after a warm-up; "
        "table: median over rounds [min-max], ratio = tree / first tree (below 1: faster)",
        f"- trees: " + ", ".join(f"`{t}`" for t in trees),
        "",
        "| N | rival | pass | " + " | ".join(f"{os.path.basename(os.path.abspath(t)) or t} ms" for t in trees)
        + " | " + " | ".join(f"ratio {os.path.basename(os.path.abspath(t))}" for t in trees[1:]) + " |",
        "|---:|---|---|" + "---:|" * (2 * len(trees) - 1),
    ]
    for key in keys:
        name, n, kind = key.split("|")
        cells = [f"{med[t][key]:.1f} [{spread[t][key][0]:.1f}-{spread[t][key][1]:.1f}]" for t in trees]
        ratios = [f"{med[t][key] / med[trees[0]][key]:.3f}" for t in trees[1:]]
        lines.append(f"| {n} | {name} | {kind.replace('_', '+')} | " + " | ".join(cells + ratios) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

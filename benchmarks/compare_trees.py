"""Time the mixer, and a DiT training step, of two source trees (e.g. a commit and its
parent) in one run, interleaved.

Two versions of the package cannot share a process (they register the same operators), so
each tree gets one persistent worker process, and the parent alternates single calls between
them (only one runs at a time): load from other users of a shared machine falls on both
alike. The table gives, per (rival, N, pass), the median and range of each tree's calls, and
the ratios to the first tree. Use ``git worktree add /tmp/base <commit>`` for the old tree.

    python benchmarks/compare_trees.py --trees /tmp/base,. --ns 4096,16384 --threads 1 \\
        --out benchmarks/results/refactor_vs_base_cpu.md

Rivals ``pom-product:fused`` etc. are one mixer of width D on N tokens; ``dit-pom`` and
``dit-attention`` one DiT-M/4 (6 blocks, 32x32 grey images, 64 tokens, batch 16): its
forward, and its forward + backward of the flow-matching loss (a training step without the
optimizer), whatever N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time

RIVALS = "pom-product:fused,pom-product:lean,pom-power:fused,pom-power:lean"


def worker(args) -> None:
    """A persistent process of one tree: reads commands on stdin, answers on stdout.

    ``setup N`` builds the rivals and inputs for N tokens and runs each once (warm-up,
    compile); ``time RIVAL fwd|fwd_bwd`` times one call and prints its milliseconds."""
    sys.path.insert(0, os.path.abspath(args.tree))
    import torch

    from polymixer import PolynomialMixer

    torch.set_num_threads(args.threads)
    state = {}

    def call(m, backward):
        if isinstance(m, tuple):  # a DiT: (model, x0, t, labels)
            return _time_dit(m, backward)
        start = time.perf_counter()
        if backward:
            m(state["x"], **state["kwargs"]).backward(state["grad"])
        else:
            with torch.no_grad():
                m(state["x"], **state["kwargs"])
        return (time.perf_counter() - start) * 1e3

    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "setup":
            n = int(cmd[1])
            torch.manual_seed(0)
            state["mixers"] = {}
            for name in args.rivals.split(","):
                if name.startswith("dit-"):
                    state["mixers"][name] = _dit_step(name[len("dit-"):])
                    continue
                base, _, impl = name.partition(":")
                state["mixers"][name] = PolynomialMixer(args.dim, degree=2, expand=2, variant=base.split("-")[1],
                                                        implementation=impl or "fused")
            state["x"] = torch.randn(args.batch, n, args.dim, requires_grad=True)
            state["grad"] = torch.ones(args.batch, n, args.dim)
            state["kwargs"] = ({"causal": True} if args.mode == "causal"
                               else {"block_size": max(1, n // 16)} if args.mode == "block" else {})
            for m in state["mixers"].values():
                call(m, False)
                call(m, True)
            print("ok", flush=True)
        elif cmd[0] == "time":
            print(f"{call(state['mixers'][cmd[1]], cmd[2] == 'fwd_bwd'):.4f}", flush=True)


def _dit_step(mixer: str):
    """A DiT-M/4 of ``mixer`` with one batch of inputs: (model, x0, t, labels)."""
    import torch

    from polymixer.models import DiT, dit_config

    torch.manual_seed(0)
    model = DiT(dit_config("DiT-M/4", mixer, image_size=32, in_channels=1, n_classes=10, depth=6,
                           mlp_conv=0, pom_rotary=0)).train()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 1, 32, 32, generator=g), torch.rand(16, generator=g), torch.arange(16) % 10


def _time_dit(m, backward: bool) -> float:
    import torch

    model, x0, t, y = m
    noise = torch.randn_like(x0)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    start = time.perf_counter()
    if backward:
        model.zero_grad(set_to_none=True)
        ((model(x_t, t, y) - (noise - x0)) ** 2).mean().backward()
    else:
        with torch.no_grad():
            model(x_t, t, y)
    return (time.perf_counter() - start) * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", help="comma-separated source trees; ratios are to the first")
    p.add_argument("--rivals", default=RIVALS)
    p.add_argument("--ns", default="4096,16384")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="full", choices=["full", "causal", "block"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="timed calls per (rival, N, pass) and tree")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if not args.trees:
        p.error("--trees is required")
    trees = args.trees.split(",")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    procs = {}
    for tree in trees:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--tree", tree]
        for opt in ("rivals", "dim", "batch", "mode", "threads"):
            cmd += [f"--{opt}", str(getattr(args, opt))]
        procs[tree] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                       cwd=tree)

    def ask(tree, line):
        proc = procs[tree]
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise SystemExit(f"{tree}: the worker stopped")
        return answer.strip()

    rivals = args.rivals.split(",")
    times = {}
    keys = []
    for n in [int(v) for v in args.ns.split(",")]:
        for tree in trees:
            ask(tree, f"setup {n}")
        for r in range(args.repeats):
            for name in rivals:
                for kind in ("fwd", "fwd_bwd"):
                    key = f"{name}|{n}|{kind}"
                    if key not in keys:
                        keys.append(key)
                    for tree in (trees if r % 2 == 0 else trees[::-1]):  # alternate who goes first
                        times.setdefault((tree, key), []).append(float(ask(tree, f"time {name} {kind}")))
        print(f"N={n}: done", flush=True)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    med = {t: {k: statistics.median(times[(t, k)]) for k in keys} for t in trees}
    spread = {t: {k: (min(times[(t, k)]), max(times[(t, k)])) for k in keys} for t in trees}
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"# Mixer and DiT time, {len(trees)} source trees in one run ({args.mode} mode)",
        "",
        f"- command: `python benchmarks/compare_trees.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} logical cores (shared), torch {torch.__version__}, {args.threads} thread(s)",
        (f"- mixers: D={args.dim}, batch={args.batch}, degree 2, expand 2, float32, default settings "
         f"(compile=auto: eager below 8192 token rows, compiled from there)"
         if any(not r.startswith("dit-") for r in args.rivals.split(",")) else
         "- DiT-M/4 (6 blocks, width 128), 32x32 grey images (64 tokens), batch 16, float32: forward, and "
         "forward + backward of the flow-matching loss (a training step without the optimizer); N is unused"),
        f"- one persistent process per tree; every call alternates between the trees (who goes first "
        f"alternates too), after one warm-up call per rival (which compiles what is compiled); "
        f"{args.repeats} calls per (rival, N, pass) and tree; table: median [min-max] ms; ratio = median of "
        "the tree / median of the first tree (below 1: faster), and the same for the minima",
        "- trees: " + ", ".join(f"`{t}`" for t in trees),
        "",
        "| N | rival | pass | " + " | ".join(f"{os.path.basename(os.path.abspath(t)) or t} ms" for t in trees)
        + " | " + " | ".join(f"ratio {os.path.basename(os.path.abspath(t))} (median, min)" for t in trees[1:]) + " |",
        "|---:|---|---|" + "---:|" * (2 * len(trees) - 1),
    ]
    for key in keys:
        name, n, kind = key.split("|")
        cells = [f"{med[t][key]:.1f} [{spread[t][key][0]:.1f}-{spread[t][key][1]:.1f}]" for t in trees]
        ratios = [f"{med[t][key] / med[trees[0]][key]:.3f}, {spread[t][key][0] / spread[trees[0]][key][0]:.3f}"
                  for t in trees[1:]]
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

"""PoM versus attention on a GPU, at a fixed token budget per batch, in one run.

For every sequence length N the batch holds ``--tokens`` tokens (default 2^18), i.e.
B = tokens / N sequences, so every row of the table does the same projection work and
only the token mixing differs. Rivals, all at width D (``--dim``), bf16 autocast:

  pom-product    PolynomialMixer, variant="product" (degree 2, expand 2), default
                 implementation ("fused"); pom-product:lean / :autograd / :compiled pick
                 another (":compiled" = torch.compile of the autograd form)
  pom-power      PolynomialMixer, variant="power"   (degree 2, expand 2), same suffixes
  floor-product  the product mixer's projections alone (its GEMM floor); floor-power
  sdpa           MultiHeadAttention: F.scaled_dot_product_attention (flash on GPU)
  agg-triton     the aggregation alone on (B, N, F) bf16 features (F = 4 D), Triton kernels
  agg-torch      the same through the PyTorch forms (cumsum, index_add)
  NAME@torch     any pom rival with the Triton aggregation switched off (MixerSettings(triton="off"))

Per (rival, mode, N): median milliseconds of the forward (no grad) and of forward +
backward over ``--repeats`` runs after ``--warmup`` runs, timed with CUDA events; the peak
memory each pass adds (torch.cuda.max_memory_allocated minus what was allocated before).
The rivals are interleaved inside every repeat. The 2026 PoM paper reports about 0.012 s
for PoM against 0.23 s for FlashAttention per batch of 2^18 tokens at 2^16 tokens per
sequence (about 19x); the script prints the same ratio from this run.

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu_h100
    python benchmarks/bench_gpu.py --device cpu --ns 256          # smoke test, no GPU
    python benchmarks/bench_gpu.py --replot benchmarks/results/gpu_h200_full.json   # PNG only

writes <out>.md (command, date, device, table) and <out>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time

import torch
from torch import nn

from _common import GemmFloor, device_name, versions  # benchmarks/_common.py (this script's folder)
from polymixer import MultiHeadAttention, PolynomialMixer
from polymixer.ops import MixerSettings
from polymixer.ops import triton as pom_triton
from polymixer.ops.context import aggregate, resolve_context

PAPER_POM_S, PAPER_ATTENTION_S, PAPER_N = 0.012, 0.23, 2 ** 16


class AggregationOnly(nn.Module):
    """``aggregate(h, mode)`` with Triton on or off; input (B, N, F) features."""

    def __init__(self, use_triton: bool):
        super().__init__()
        self.use_triton = use_triton

    def forward(self, h, **kwargs):
        B, N = h.shape[:2]
        mode = resolve_context(B, N, N, device=h.device, **kwargs)
        if self.use_triton and pom_triton.triton_available(h):
            return aggregate(h, mode, backend="triton")  # also interpreted CPU tensors
        return aggregate(h, mode, backend="torch")


class Rival:
    def __init__(self, name: str, dim: int, heads: int, device):
        self.name = name
        base, _, suffix = name.partition("@")
        base, _, impl = base.partition(":")
        self.use_triton = suffix != "torch"
        self.width = dim
        if base in ("pom-product", "pom-power"):
            settings = MixerSettings.from_env(**({} if self.use_triton else {"triton": "off"}))
            self.module = PolynomialMixer(dim, degree=2, expand=2, variant=base.split("-")[1], settings=settings)
            if impl == "compiled":  # inductor on the plain autograd form
                self.module.implementation = "autograd"
                self.module = torch.compile(self.module, dynamic=False)
            elif impl:
                self.module.implementation = impl
        elif base in ("floor-product", "floor-power"):
            self.module = GemmFloor(PolynomialMixer(dim, degree=2, expand=2, variant=base.split("-")[1]))
        elif base == "sdpa":
            self.module = MultiHeadAttention(dim, heads=heads)
        elif base in ("agg-triton", "agg-torch"):
            self.module = AggregationOnly(base == "agg-triton")
            self.width = 4 * dim  # the product mixer's state width at degree 2, expand 2
        else:
            raise ValueError(f"unknown rival {name!r}")
        self.module.to(device)

    def __call__(self, x, kwargs):
        return self.module(x, **kwargs)


def check_agreement(device, modes, width: int, block_size: int) -> list[str]:
    """Triton against PyTorch aggregation on one bf16 batch: outputs and gradients."""
    lines = []
    n = 3000  # not a multiple of the tiles
    for mode in modes:
        kwargs = mode_kwargs(mode, n, min(block_size, 700))
        torch.manual_seed(0)
        h = torch.randn(2, n, width, device=device).to(torch.bfloat16)
        g = None
        results = []
        for use_triton in (True, False):
            x = h.detach().requires_grad_()
            y = AggregationOnly(use_triton)(x, **kwargs)
            g = torch.randn_like(y) if g is None else g
            y.backward(g)
            results.append((y.detach(), x.grad.float()))
        (y1, d1), (y2, d2) = results
        err_y = ((y1 - y2).abs().max() / y2.abs().max().clamp_min(1e-30)).item()
        err_d = ((d1 - d2).abs().max() / d2.abs().max().clamp_min(1e-30)).item()
        lines.append(f"agreement {mode}: Triton vs PyTorch, max relative error output {err_y:.1e}, gradient {err_d:.1e}")
        if err_y > 1e-4 or err_d > 1e-2:
            raise SystemExit(lines[-1] + ": the Triton aggregation disagrees with PyTorch")
    return lines


def mode_kwargs(mode: str, n: int, block_size: int) -> dict:
    if mode == "full":
        return {}
    if mode == "causal":
        return {"causal": True}
    if mode == "block":
        return {"block_size": min(block_size, n)}
    raise ValueError(f"unknown mode {mode!r}")


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        """Milliseconds of fn()."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_pass(rival: Rival, x, grad, kwargs, backward: bool, autocast_dtype):
    device_type = x.device.type
    if backward:
        x.grad = None
        rival.module.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype):
            y = rival(x, kwargs)
        y.backward(grad.to(y.dtype).expand_as(y))
    else:
        with torch.no_grad(), torch.autocast(device_type, dtype=autocast_dtype):
            rival(x, kwargs)


def peak_mib(rival, x, grad, kwargs, backward, autocast_dtype) -> float | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_pass(rival, x, grad, kwargs, backward, autocast_dtype)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def fmt(v, spec=".2f"):
    return "—" if v is None else (v if isinstance(v, str) else format(v, spec))


def plot(rows: list[dict], title: str, out_png: str) -> None:
    """Time (forward, forward+backward) and peak memory versus N, log axes, one line per
    rival and mode; OOM rows are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    modes = sorted({r["mode"] for r in rows})
    for mode in modes:
        for name in dict.fromkeys(r["rival"] for r in rows):
            pts = sorted((r["n"], r) for r in rows if r["rival"] == name and r["mode"] == mode and not r["oom"])
            if not pts:
                continue
            label = name if len(modes) == 1 else f"{name} ({mode})"
            n = [p[0] for p in pts]
            axes[0].plot(n, [p[1]["fwd_ms"] for p in pts], marker="o", label=label)
            axes[1].plot(n, [p[1]["fwd_bwd_ms"] for p in pts], marker="o", label=label)
            if all(p[1]["fwd_bwd_peak_mib"] is not None for p in pts):
                axes[2].plot(n, [p[1]["fwd_bwd_peak_mib"] for p in pts], marker="o", label=label)
    for ax, name in zip(axes, ["forward (ms per batch)", "forward+backward (ms per batch)",
                               "peak memory, forward+backward (MiB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per sequence N")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = out_png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out_png)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rivals", default="pom-product,pom-product:autograd,floor-product,pom-power,floor-power,"
                                       "sdpa,agg-triton,agg-torch",
                   help="comma list (see above); e.g. add pom-product@torch")
    p.add_argument("--modes", default="full", help="comma list of full, causal, block")
    p.add_argument("--ns", default="1024,2048,4096,8192,16384,32768,65536", help="tokens per sequence")
    p.add_argument("--tokens", type=int, default=None,
                   help="tokens per batch, batch = tokens / N (default 2^18 on GPU, 2^10 on CPU)")
    p.add_argument("--dim", type=int, default=None, help="model width D (default 1024 on GPU, 128 on CPU)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--block-size", type=int, default=1024, help="tokens per block (frame) in the block mode")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="autocast dtype")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (GPU), 1 (CPU)")
    p.add_argument("--repeats", type=int, default=None, help="default 10 (GPU), 2 (CPU)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only)")
    p.add_argument("--out", default=None, help="path prefix of the .md/.json results, e.g. benchmarks/results/gpu_h100")
    p.add_argument("--plot", action="store_true", help="also write <out>.png (time and memory versus N)")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="only draw the PNG of an earlier run's JSON (next to it) and exit; no device needed")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        device_line = next((h for h in saved["header"] if h.startswith("device:")), "")
        out_png = os.path.splitext(args.replot)[0] + ".png"
        plot(saved["rows"], device_line + "; " + saved["header"][3], out_png)
        print(f"wrote {out_png}")
        return

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available (use --device cpu for a smoke run)")
    if not gpu:
        torch.set_num_threads(args.threads)
    tokens = args.tokens or (2 ** 18 if gpu else 2 ** 10)
    dim = args.dim or (1024 if gpu else 128)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    repeats = args.repeats if args.repeats is not None else (10 if gpu else 2)
    autocast_dtype = getattr(torch, args.dtype)
    ns = [int(v) for v in args.ns.split(",")]
    modes = args.modes.split(",")
    names = args.rivals.split(",")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    timer = Timer(device)
    triton_on = pom_triton.triton_available(torch.empty(0, device=device))

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv)))
    header = [
        f"command: `{command}`",
        f"date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device: {device_name(device)}; {versions()}; Triton aggregation {'on' if triton_on else 'off'}",
        f"D={dim}, heads={args.heads}, {tokens} tokens per batch, autocast {args.dtype}, "
        f"median of {repeats} after {warmup} warm-up runs",
    ]
    if triton_on:
        header += check_agreement(device, modes, 4 * dim, args.block_size)
    print("\n".join(header), flush=True)

    rows = []
    for mode in modes:
        for n in ns:
            if n > tokens:
                print(f"skip N={n}: more than --tokens={tokens}")
                continue
            batch = tokens // n
            kwargs = mode_kwargs(mode, n, args.block_size)
            torch.manual_seed(0)
            rivals, inputs = [], {}
            for name in names:
                rival = Rival(name, dim, args.heads, device)
                if rival.width not in inputs:
                    x = torch.randn(batch, n, rival.width, device=device)
                    if name.startswith("agg-"):
                        x = x.to(autocast_dtype)  # features as a bf16 mixer would produce them
                    inputs[rival.width] = x
                rivals.append(rival)
            grad = torch.randn(1, 1, dim, device=device)
            agg_grad = torch.randn(1, 1, 4 * dim, device=device)
            results = {r.name: {"fwd": [], "bwd": [], "oom": False} for r in rivals}

            def call(r, backward):
                x = inputs[r.width].detach().requires_grad_(backward)
                g = agg_grad if r.width != dim else grad
                return timer(lambda: run_pass(r, x, g, kwargs, backward, autocast_dtype))

            for it in range(warmup + repeats):
                for r in rivals:
                    res = results[r.name]
                    if res["oom"]:
                        continue
                    for backward in (False, True):
                        try:
                            ms = call(r, backward)
                        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                            if not is_oom(e):
                                raise
                            res["oom"] = True
                            if gpu:
                                torch.cuda.empty_cache()
                            break
                        if it >= warmup:
                            res["bwd" if backward else "fwd"].append(ms)
            for r in rivals:
                res = results[r.name]
                row = {"rival": r.name, "mode": mode, "n": n, "batch": batch, "oom": res["oom"],
                       "fwd_ms": None, "fwd_bwd_ms": None, "fwd_peak_mib": None, "fwd_bwd_peak_mib": None}
                if not res["oom"]:
                    row["fwd_ms"] = statistics.median(res["fwd"])
                    row["fwd_bwd_ms"] = statistics.median(res["bwd"])
                    x = inputs[r.width].detach()
                    g = agg_grad if r.width != dim else grad
                    try:
                        row["fwd_peak_mib"] = peak_mib(r, x, g, kwargs, False, autocast_dtype)
                        row["fwd_bwd_peak_mib"] = peak_mib(r, x.requires_grad_(), g, kwargs, True, autocast_dtype)
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                        if not is_oom(e):
                            raise
                rows.append(row)
                print(f"{mode:6s} N={n:6d} B={batch:5d} {r.name:18s} fwd {fmt(row['fwd_ms'], '9.2f')} ms   "
                      f"fwd+bwd {fmt(row['fwd_bwd_ms'], '9.2f')} ms   peak {fmt(row['fwd_bwd_peak_mib'], '.0f')} MiB"
                      + ("   OOM" if res["oom"] else ""), flush=True)
            del rivals, inputs
            if gpu:
                torch.cuda.empty_cache()

    # sdpa time / rival time, per mode and N
    sdpa = {(r["mode"], r["n"]): r for r in rows if r["rival"] == "sdpa"}
    for r in rows:
        ref = sdpa.get((r["mode"], r["n"])) if not r["rival"].startswith("agg-") else None
        for key in ("fwd_ms", "fwd_bwd_ms"):
            ok = ref is not None and ref[key] is not None and r[key]
            r[f"sdpa_over_{key[:-3]}"] = ref[key] / r[key] if ok else None

    # rival time / its GEMM floor (pom rivals, when the floor of the same variant ran)
    floors = {(r["rival"].split("-")[1], r["mode"], r["n"]): r for r in rows if r["rival"].startswith("floor-")}
    for r in rows:
        r["over_floor_fwd"] = r["over_floor_fwd_bwd"] = None
        if r["rival"].startswith("pom-"):
            variant = r["rival"].split("-")[1].split(":")[0].split("@")[0]
            f = floors.get((variant, r["mode"], r["n"]))
            if f and f["fwd_ms"] and r["fwd_ms"]:
                r["over_floor_fwd"] = r["fwd_ms"] / f["fwd_ms"]
                r["over_floor_fwd_bwd"] = r["fwd_bwd_ms"] / f["fwd_bwd_ms"]

    lines = header + [
        "",
        "| rival | mode | N | batch | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB | sdpa/rival fwd | sdpa/rival fwd+bwd | rival/floor fwd | rival/floor fwd+bwd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rival']} | {r['mode']} | {r['n']} | {r['batch']} | "
            f"{'OOM' if r['oom'] else fmt(r['fwd_ms'])} | {'OOM' if r['oom'] else fmt(r['fwd_bwd_ms'])} | "
            f"{fmt(r['fwd_peak_mib'], '.0f')} | {fmt(r['fwd_bwd_peak_mib'], '.0f')} | "
            f"{fmt(r['sdpa_over_fwd'], '.1f')} | {fmt(r['sdpa_over_fwd_bwd'], '.1f')} | "
            f"{fmt(r['over_floor_fwd'])} | {fmt(r['over_floor_fwd_bwd'])} |"
        )
    paper = PAPER_ATTENTION_S / PAPER_POM_S
    summary = ["", f"Paper (2604.06129): FlashAttention {PAPER_ATTENTION_S} s / PoM {PAPER_POM_S} s per batch of "
                   f"2^18 tokens at N = 2^16: {paper:.1f}x."]
    full_rows = [r for r in rows if r["mode"] == "full" and r["rival"].startswith("pom-")]
    if full_rows:
        n_top = max(r["n"] for r in full_rows)
        for r in full_rows:
            if r["n"] == n_top:
                summary.append(
                    f"This run, N = {n_top}, sdpa / {r['rival']}: forward {fmt(r['sdpa_over_fwd'], '.1f')}x, "
                    f"forward+backward {fmt(r['sdpa_over_fwd_bwd'], '.1f')}x"
                    + ("" if n_top == PAPER_N and tokens == 2 ** 18 else " (not the paper's sizes)")
                )
    by_key = {(r["rival"], r["mode"], r["n"]): r for r in rows}
    for (name, mode, n), r in by_key.items():
        torch_row = by_key.get(("agg-torch", mode, n))
        if name == "agg-triton" and torch_row and r["fwd_ms"] and torch_row["fwd_ms"]:
            summary.append(
                f"Aggregation alone, {mode}, N = {n}: PyTorch / Triton time, forward "
                f"{torch_row['fwd_ms'] / r['fwd_ms']:.2f}x, forward+backward "
                f"{torch_row['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x"
                + ("" if triton_on else " (Triton off on this device: both are PyTorch)")
            )
    print("\n".join(summary))
    lines += summary
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        for suffix, text in ((".md", "\n".join(lines) + "\n"),
                             (".json", json.dumps({"header": header, "rows": rows}, indent=1) + "\n")):
            tmp = args.out + suffix + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, args.out + suffix)
        print(f"wrote {args.out}.md and {args.out}.json")
        if args.plot:
            plot(rows, header[2] + "; " + header[3], args.out + ".png")
            print(f"wrote {args.out}.png")


if __name__ == "__main__":
    main()

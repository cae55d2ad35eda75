"""Where the time of one PoM layer goes, per implementation: a torch.profiler table.

Profiles forward + backward of a PolynomialMixer (default: product variant, degree 2,
expand 2, the default context) under bf16 autocast, once per implementation (``fused``,
``lean``, ``autograd``), on the same input, and writes the operators that take the most
device time (self time; CUDA kernels on a GPU, CPU operators otherwise) for each. Made to
answer why the product variant's fused backward was slower than plain autograd on an H200
(benchmarks/results/gpu_h200_full.md) although it halves the memory.

    python benchmarks/profile_mixer.py --out benchmarks/results/profile_mixer_h200   # on a GPU
    python benchmarks/profile_mixer.py --device cpu --n 256 --dim 64 --batch 2          # smoke test

writes <out>.md (command, date, device, one table per implementation) and <out>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from _common import device_name, versions  # benchmarks/_common.py (this script's folder)
from polymixer import PolynomialMixer
from polymixer.nn.mixer import IMPLEMENTATIONS


def step(mixer: PolynomialMixer, x: torch.Tensor, grad: torch.Tensor, kwargs: dict, dtype) -> None:
    """One forward + backward, parameter and input gradients."""
    x.grad = None
    mixer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        y = mixer(x, **kwargs)
    y.backward(grad.to(y.dtype))


def profile_one(mixer, x, grad, kwargs, dtype, warmup: int, repeats: int, top: int) -> dict:
    cuda = x.device.type == "cuda"
    for _ in range(warmup):
        step(mixer, x, grad, kwargs, dtype)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            step(mixer, x, grad, kwargs, dtype)
        if cuda:
            torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else None
    events = prof.key_averages()

    def self_us(e) -> float:
        return (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) if cuda \
            else e.self_cpu_time_total

    ops = sorted((e for e in events if self_us(e) > 0), key=self_us, reverse=True)
    total = sum(self_us(e) for e in ops)
    return {
        "ms_per_step": total / 1e3 / repeats,
        "peak_mib": peak,
        "ops": [{"name": e.key, "calls": e.count // repeats, "ms_per_step": self_us(e) / 1e3 / repeats,
                 "share": self_us(e) / total if total else 0.0} for e in ops[:top]],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", default="product", choices=["product", "power"])
    p.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                   help=f"comma list of {', '.join(IMPLEMENTATIONS)}")
    p.add_argument("--n", type=int, default=16384, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--causal", action="store_true", help="profile the causal context instead of the full one")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=15, help="operators listed per implementation")
    p.add_argument("--out", default=None, help="path prefix of <out>.md and <out>.json (default: print only)")
    args = p.parse_args(argv)
    impls = args.implementations.split(",")
    for impl in impls:
        if impl not in IMPLEMENTATIONS:
            p.error(f"--implementations: {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    mixer = PolynomialMixer(args.dim, degree=2, expand=2, variant=args.variant).to(device)
    x = torch.randn(args.batch, args.n, args.dim, device=device, requires_grad=True)
    grad = torch.randn(args.batch, args.n, args.dim, device=device)
    kwargs = {"causal": True} if args.causal else {}
    results = {}
    for impl in impls:
        mixer.implementation = impl
        results[impl] = profile_one(mixer, x, grad, kwargs, dtype, args.warmup, args.repeats, args.top)

    unit = "device (CUDA kernel)" if device.type == "cuda" else "CPU"
    lines = [f"# Profile of one PoM layer, forward + backward ({args.variant} variant, {device.type})", "",
             f"- command: `{shlex.join(['python', 'benchmarks/profile_mixer.py', *sys.argv[1:]])}`",
             f"- date: {dt.date.today().isoformat()}; device: {device_name(device)}; {versions()}",
             f"- input (B, N, D) = ({args.batch}, {args.n}, {args.dim}), degree 2, expand 2, "
             f"{'causal' if args.causal else 'full'} context, {args.dtype} autocast; "
             f"{args.repeats} profiled steps after {args.warmup} warm-up steps",
             f"- times are {unit} self time per step, summed over the operators' calls", ""]
    lines.append("| implementation | ms per step (profiled) | peak MiB |")
    lines.append("|---|---:|---:|")
    for impl, r in results.items():
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"| {impl} | {r['ms_per_step']:.2f} | {peak} |")
    for impl, r in results.items():
        lines += ["", f"## {impl}", "", "| operator | calls per step | ms per step | share |", "|---|---:|---:|---:|"]
        for op in r["ops"]:
            name = op["name"].replace("|", "/")
            name = name if len(name) <= 90 else name[:87] + "..."
            lines.append(f"| `{name}` | {op['calls']} | {op['ms_per_step']:.3f} | {op['share']:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(text)
        with open(args.out + ".json", "w") as f:
            json.dump({"args": vars(args), "device": device_name(device), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

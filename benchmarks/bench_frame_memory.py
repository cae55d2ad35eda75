"""Forward + backward of one PoM layer of a video DiT with each frame memory against the
plain mean, in one interleaved run (ratios, not absolute times; docs/mixer.md, "Frame
memory").

    OMP_NUM_THREADS=1 python benchmarks/bench_frame_memory.py            # B=4, 8 frames x 64 tokens, D=128
    python benchmarks/bench_frame_memory.py --device cuda --batch 32 --frames 16 --tokens 256 --dim 384

Prints one row per option: the median time of ``--repeats`` calls (after ``--warmup``
rounds), its ratio to the fused plain mean, and on CUDA the peak memory of a call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from polymixer import PolynomialMixer

OPTIONS = [("mean", "fused"), ("mean", "autograd"), ("decay", "fused"), ("gated-decay", "fused"),
           ("window:2", "fused"), ("window:4", "fused")]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per frame")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames * args.tokens, args.dim, device=device)
    mixers = []
    for memory, implementation in OPTIONS:
        mixer = PolynomialMixer(args.dim, frame_memory=memory, implementation=implementation).to(device)
        form = mixer.execution_plan(x, block_size=args.tokens).form
        mixers.append((f"{memory} ({form})", mixer))
    times = {name: [] for name, _ in mixers}
    peaks = {name: 0 for name, _ in mixers}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for round_ in range(args.warmup + args.repeats):  # interleaved: the machine's drift hits every option alike
        for name, mixer in mixers:
            xi = x.clone().requires_grad_()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            mixer(xi, block_size=args.tokens).sum().backward()
            sync()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    base = statistics.median(times[mixers[0][0]])
    print(f"B={args.batch}, {args.frames} frames x {args.tokens} tokens, D={args.dim}, "
          f"F={mixers[0][1].state_width}, {device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    rows = []
    for name, _ in mixers:
        median = statistics.median(times[name])
        memory = f"  peak {peaks[name] / 2**20:8.1f} MiB" if device.type == "cuda" else ""
        print(f"{name:24s} {median * 1e3:9.2f} ms  x{median / base:.2f}{memory}")
        rows.append({"option": name, "ms": median * 1e3, "ratio": median / base})
    return rows


if __name__ == "__main__":
    main()

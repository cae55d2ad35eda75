"""Probe: does starting each frame from the frame before keep the digit's shape? (issue 24)

    python experiments/warm_start_sampling.py CHECKPOINT --level 0.8 [--frames 16] [--clips 100]
        [--cfg 3] [--steps 20] --out warm08.json

Frame-by-frame sampling starts every frame from pure noise at t = 1, so the shape of the digit
is drawn anew each frame and only the history says what it was. Here every frame after the
first starts instead from the finished frame before, noised to ``--level`` s:
``x_s = (1 - s) x_prev + s eps``, and is integrated from s to 0 on the part of the usual
time grid below s. The model was never trained on such a start (its input at s holds the
frame before, not the frame to draw), so this is a probe of where the shape is decided, not a
sampler to ship. It runs ``polymixer eval``'s measurements (per-frame Fréchet distance and
accuracy, identity, motion, shape change) with the same seed, clips and settings as
``polymixer eval --mode sequential``; ``--level 1`` is plain sampling.
"""

import argparse
import json
from pathlib import Path

import torch

import polymixer.video as video
from polymixer.diffusion.samplers import classifier_free_guidance, flow_times
from polymixer.evaluate import evaluate_checkpoint, summary_lines


def _warm_start(level: float):
    """Patch the frame-by-frame sampler (this process only) to start from the frame before."""
    plain_add, plain_sample = video.FrameStream.add_clean_frame, video.sample

    def add_clean_frame(self, frame, cond, guided):
        self.last_frame = frame
        return plain_add(self, frame, cond, guided)

    def sample(model, noise, y, *, objective, sampler, steps, cfg_scale, shift, clip, indexed=False, progress=False):
        before = getattr(model, "last_frame", None)
        if before is None or level >= 1 or sampler not in (None, "euler"):
            return plain_sample(model, noise, y, objective=objective, sampler=sampler, steps=steps,
                                cfg_scale=cfg_scale, shift=shift, clip=clip, indexed=indexed, progress=progress)
        ts = [level] + [float(t) for t in flow_times(steps, shift) if t < level - 1e-9]
        fn = classifier_free_guidance(model, cfg_scale)
        x = (1 - level) * before + level * noise
        for i in range(len(ts) - 1):
            t = torch.full((x.shape[0],), ts[i], dtype=x.dtype, device=x.device)
            x = x + (ts[i + 1] - ts[i]) * fn(x, t, y, evaluation=i)
        return x

    video.FrameStream.add_clean_frame, video.sample = add_clean_frame, sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--level", type=float, required=True, help="start level s of every frame after the first (1 = plain)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON file; a filmstrip of the first 10 clips is written beside it")
    args = p.parse_args(argv)
    if not 0 < args.level <= 1:
        p.error(f"--level: expected a noise level in (0, 1], got {args.level}")
    torch.set_num_threads(args.threads)
    _warm_start(args.level)
    out = Path(args.out)
    result = evaluate_checkpoint(args.checkpoint, num_samples=args.clips, seed=args.seed, steps=args.steps,
                                 cfg_scale=args.cfg, mode="sequential", frames=args.frames, batch_size=50,
                                 samples_out=out.with_suffix(".png"))
    result["warm_start_level"] = args.level
    out.write_text(json.dumps(result, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

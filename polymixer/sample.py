"""Sample images from a trained DiT: load a model folder or a training checkpoint, write a PNG
grid and optionally the raw samples (``.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .diffusion import SAMPLERS, make_objective, sample
from .images import save_grid
from .io import CheckpointError, atomic_write, read_json
from .models import DiT
from .models.io import load_state_checked

__all__ = ["load_for_sampling", "generate", "save_samples_grid", "save_array", "parse_classes"]

DEFAULT_PIPELINE = {"objective": "flow", "shift": 1.0, "data_range": [-1.0, 1.0], "latent": None, "class_names": None}


def load_for_sampling(path: str | Path, device: str | torch.device = "cpu") -> tuple[DiT, dict]:
    """Load ``path``: a folder from ``save_pretrained`` (config.json + model.safetensors, with
    an optional pipeline.json) or a training checkpoint folder (its EMA weights are used)."""
    from .models.dit import DiTConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {str(path)!r} does not exist")
    if (path / "state.json").is_file():
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device="cpu")
        try:
            config = DiTConfig.from_dict(ckpt["state"]["model_config"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a DiT training checkpoint: {exc}") from exc
        model = DiT(config)
        load_state_checked(model, ckpt["ema"], f"{path}/ema.safetensors")
        pipeline = {**DEFAULT_PIPELINE, **ckpt["state"].get("pipeline", {})}
    else:
        model = DiT.from_pretrained(path)
        pipeline = dict(DEFAULT_PIPELINE)
        if (path / "pipeline.json").is_file():
            pipeline.update(read_json(path / "pipeline.json"))
    return model.to(device).eval(), pipeline


def parse_classes(text: str | list[int] | None, n_classes: int) -> list[int]:
    """``"all"``/None -> 0..n-1; ``"3,5,7"`` or ``"0-9"`` -> a list; each checked against n_classes."""
    if text is None or text == "all":
        return list(range(n_classes))
    if isinstance(text, str):
        out: list[int] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
                out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                raise ValueError(f"classes: cannot parse {part!r} in {text!r}; expected e.g. '0,3,7' or '0-9'") from None
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
    model: DiT,
    pipeline: dict,
    classes: list[int],
    *,
    per_class: int = 1,
    steps: int = 30,
    cfg_scale: float = 2.0,
    sampler: str | None = None,
    seed: int = 0,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``(len(classes) * per_class, C, H, W)`` in the data range, class-major order,
    and their labels. The noise comes from a generator seeded with ``seed``: same seed,
    same images (on the same machine and library versions)."""
    cfg = model.config
    labels = torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.int64)
    model.check_labels(labels)
    size = image_size or cfg.image_size
    model.check_image_size(size, size)
    objective = make_objective(pipeline.get("objective", "flow"))
    kind = "flow" if pipeline.get("objective", "flow") == "flow" else "ddpm"
    if sampler is not None and sampler not in SAMPLERS[kind]:
        raise ValueError(f"sampler: {sampler!r} does not go with the {kind} objective; expected one of {SAMPLERS[kind]}")
    latent = pipeline.get("latent")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), cfg.in_channels, size, size, generator=gen)
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, len(labels), batch_size):
            x = sample(model, noise[start:start + batch_size].to(device), labels[start:start + batch_size].to(device),
                       objective=objective, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                       null_class=cfg.n_classes, shift=float(pipeline.get("shift", 1.0)),
                       clip=None if latent else 1.0, progress=progress)
            outs.append(x.float().cpu())
    finally:
        model.train(was_training)
    samples = torch.cat(outs)
    if latent:
        from .data.latent import decode_latents

        samples = decode_latents(samples, latent, device=device)
    lo, hi = pipeline.get("data_range", [-1.0, 1.0])
    return samples.clamp(lo, hi), labels


def save_samples_grid(samples: torch.Tensor, pipeline: dict, path: str | Path, per_class: int,
                      scale: int | None = None) -> Path:
    """A PNG grid with one row per class (``per_class`` images per row)."""
    if scale is None:
        scale = max(1, 64 // samples.shape[-1])
    return save_grid(samples, path, nrow=per_class, data_range=tuple(pipeline.get("data_range", (-1.0, 1.0))),
                     scale=scale)


def save_array(samples: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """Write ``samples`` (float32 (N, C, H, W), data range) and ``labels`` (int64 (N,)) to ``.npz``."""
    s, lab = samples.float().numpy(), labels.numpy()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, samples=s, labels=lab)

    return atomic_write(path, write)

"""Latent diffusion: encode a dataset with a diffusers ``AutoencoderKL`` from a local folder.

diffusers is an optional extra (``pip install 'polymixer[latent]'``); nothing is downloaded:
the VAE must be a folder written by ``AutoencoderKL.save_pretrained`` (config.json +
weights). Latents are the posterior means times the VAE's ``scaling_factor``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._optional import require
from .dataset import ImageDataset

__all__ = ["load_vae", "encode_dataset", "decode_latents"]


def load_vae(path: str | Path, device: str | torch.device = "cpu"):
    """Load a diffusers ``AutoencoderKL`` from the local folder ``path`` (never from a hub)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"vae: {str(path)!r} is not a local AutoencoderKL folder (no config.json)")
    AutoencoderKL = require("diffusers", "latent", "vae: latent diffusion").AutoencoderKL
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(data: ImageDataset, vae_path: str | Path, *, device: str | torch.device = "cpu",
                   batch_size: int = 32, progress: bool = True) -> tuple[ImageDataset, dict]:
    """Encode ``data.images: (N, C, H, W)`` in [-1, 1] to latents ``(N, c, h, w)``.

    Returns the latent dataset and the ``latent`` info (VAE path, scaling factor,
    channels, image channels) that sampling needs to decode.
    """
    vae = load_vae(vae_path, device)
    if data.channels != vae.config.in_channels:
        raise ValueError(
            f"vae: the VAE takes {vae.config.in_channels}-channel images, the data has {data.channels} "
            f"(set --channels {vae.config.in_channels})"
        )
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    out = []
    for start in tqdm(range(0, len(data), batch_size), desc="encoding latents", disable=not progress, leave=False):
        x = data.images[start:start + batch_size].to(device)
        out.append((vae.encode(x).latent_dist.mean * scale).float().cpu())
    latents = torch.cat(out)
    info = {"vae": str(Path(vae_path).resolve()), "scaling_factor": scale, "channels": latents.shape[1],
            "image_channels": data.channels}
    return ImageDataset(latents, data.labels, data.n_classes, name=f"{data.name}-latents",
                        class_names=data.class_names), info


@torch.no_grad()
def decode_latents(latents: torch.Tensor, info: dict, device: str | torch.device = "cpu",
                   batch_size: int = 32) -> torch.Tensor:
    """Decode scaled latents ``(N, c, h, w)`` back to images ``(N, C, H, W)`` in about [-1, 1]."""
    vae = load_vae(info["vae"], device)
    out = []
    for start in range(0, latents.shape[0], batch_size):
        z = latents[start:start + batch_size].to(device) / info["scaling_factor"]
        out.append(vae.decode(z).sample.float().cpu())
    return torch.cat(out)

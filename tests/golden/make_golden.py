"""Write the golden outputs that tests/test_golden.py compares with, bit for bit.

Run once with the tree whose behaviour is the reference (it was run before the token-mixer
refactor of issue 21), single-threaded:

    python tests/golden/make_golden.py

After a bundled model is replaced on purpose, record only its entries again (the others keep
the reference recording): ``python tests/golden/make_golden.py --only demo,compare_``.

It writes ``tests/golden/outputs.safetensors`` and, for the tiny models that no checkpoint
holds (a frame-local video model with per-frame noise, one with shared noise, an attention
video model), their config.json + model.safetensors under ``tests/golden/models/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from polymixer.models import build_model, config_from_dict  # noqa: E402
from polymixer.pipeline import SamplingConfig  # noqa: E402
from polymixer.sample import generate, load_for_sampling  # noqa: E402
from polymixer.video import sample_video  # noqa: E402

# tiny video models: (legacy) config fields; weights drawn from seed 0 and stored
TINY = {
    "video_local_frame": dict(frame_local_every=2, noise_levels="frame", mixer="pom"),
    "video_local_clip": dict(frame_local_every=3, noise_levels="clip", mixer="pom", pom_variant="power",
                             pom_heads=4),
    "video_attention": dict(noise_levels="frame", mixer="attention"),
}
BASE = {"architecture": "polymixer.VideoDiT", "depth": 3, "width": 32, "heads": 2, "patch_size": 4,
        "image_size": 8, "frames": 3, "in_channels": 1, "n_classes": 3, "mlp_ratio": 2.0}


def tiny_models() -> dict:
    from polymixer.models.io import save_pretrained

    out = {}
    for name, fields in TINY.items():
        folder = HERE / "models" / name
        if not (folder / "config.json").exists():
            torch.manual_seed(0)
            model = build_model(config_from_dict({**BASE, **fields}))
            for p in model.parameters():  # adaLN-Zero starts as the identity: give every weight a value
                with torch.no_grad():
                    p.add_(0.05 * torch.randn_like(p))
            save_pretrained(model, folder)
            pipe = SamplingConfig(data_range=(-1.0, 1.0), class_names=["a", "b", "c"], dataset="moving-digits")
            pipe.save(folder)
        out[name] = folder
    return out


def outputs() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    result = {}
    for name, path in [("demo", "demo"), ("compare_pom", ROOT / "checkpoints/compare/pom"),
                       ("compare_attention", ROOT / "checkpoints/compare/attention")]:
        model, pipe = load_for_sampling(path)
        samples, _ = generate(model, pipe, [0, 7], per_class=1, steps=3, cfg_scale=2.0, seed=1)
        result[name] = samples
        model.double()
        x = torch.randn(2, model.config.in_channels, 32, 32, generator=torch.Generator().manual_seed(0)).double()
        result[name + "_forward64"] = model(x, torch.tensor([0.3, 0.8]).double(), torch.tensor([1, 10]))
    model, pipe = load_for_sampling("video_demo")
    for mode in ("sequential", "joint"):
        result[f"video_demo_{mode}"] = sample_video(model, pipe, torch.tensor([2, 5]), frames=3, mode=mode,
                                                    steps=2, cfg_scale=2.0, seed=3)
    for name, folder in tiny_models().items():
        model, pipe = load_for_sampling(folder)
        modes = ["joint"] if "pom" not in model.config.mixer else ["sequential", "joint"]
        for mode in modes:
            for sampler in ("euler", "heun"):
                result[f"{name}_{mode}_{sampler}"] = sample_video(
                    model, pipe, torch.tensor([0, 2]), frames=3, mode=mode, steps=2, cfg_scale=1.5,
                    sampler=sampler, seed=4)
        if model.config.noise_levels == "frame" and "pom" in model.config.mixer:
            ctx = torch.randn(2, 1, 1, 8, 8, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
            result[f"{name}_continue"] = sample_video(model, pipe, torch.tensor([1, 2]), frames=3,
                                                      mode="sequential", steps=2, cfg_scale=2.0, seed=6,
                                                      given_frames=ctx)
    return {k: v.detach().contiguous() for k, v in result.items()}


if __name__ == "__main__":
    import argparse

    from safetensors.torch import load_file, save_file

    parser = argparse.ArgumentParser(description="record the golden outputs (all, or only some again)")
    parser.add_argument("--only", default="", help="comma-separated prefixes of the entries to record again "
                        "(e.g. demo,compare_ after a bundled model changed); the others keep their recording")
    args = parser.parse_args()
    fresh = outputs()
    path = HERE / "outputs.safetensors"
    if args.only:
        prefixes = tuple(p for p in args.only.split(",") if p)
        kept = load_file(str(path))
        changed = sorted(k for k in fresh if k.startswith(prefixes))
        if not changed:
            raise SystemExit(f"--only {args.only}: no entry starts with these (entries: {', '.join(sorted(fresh))})")
        fresh = {**kept, **{k: fresh[k] for k in changed}}
        print("recorded again:", ", ".join(changed))
    save_file(fresh, str(path))
    print("wrote", path)

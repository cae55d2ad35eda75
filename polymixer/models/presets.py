"""Size presets: DiT-S/B/L/XL with patch 2, 4 or 8 (docs/design.md, section 7) and small CPU sizes.

``dit_config("DiT-S/2", mixer="pom")`` gives the PoM version of DiT-S/2 (k = 2, e = 2,
the paper's MLP ratio: 3 for S/B, 2 for L/XL); ``mixer="attention"`` the original DiT
(MLP ratio 4). The PoM presets use one gate scalar per head (``pom_heads = heads``), which
keeps a PoM preset within 15% of the parameters of the attention preset of the same name;
pass ``pom_heads=1`` for a full-width gate (about +35% parameters at S, see README).

The PoM presets also carry the local-detail additions of :data:`POM_ADDITIONS` (issue 23's
winner): an identity-initialised 3x3 depthwise convolution in every MLP and rotary
positions inside PoM over (row, column), or (frame, row, column) for video. Pass
``mlp_conv=0, pom_rotary=0`` for the paper's plain PoM-DiT. Saved configs are not
affected: a config.json without these fields loads with both off, as before.
"""

from __future__ import annotations

import dataclasses

from .mixers import mixer_names
from .dit import DiTConfig
from .video_dit import VideoDiTConfig

# Fields of the video config that an image config does not have (besides ``frames``,
# which comes from the data).
VIDEO_ONLY = {f.name for f in dataclasses.fields(VideoDiTConfig)} - {f.name for f in dataclasses.fields(DiTConfig)} \
    - {"frames"}

__all__ = ["SIZES", "PRESETS", "POM_ADDITIONS", "dit_config", "preset_names", "config_for_data"]

#: What a PoM preset adds to the paper's block (benchmarks/results/compare_gate_rotary_cpu.md:
#: on single moving-digit frames, 3 seeds, Fréchet distance 36.7 +- 4.5 against 58.0 +- 1.7
#: for the conv alone and 44.6 +- 2.4 for attention with the same conv). Image models get
#: 2 rotary axes; :func:`config_for_data` gives video models 3.
POM_ADDITIONS = {"mlp_conv": 3, "pom_rotary": 2}

# name: (depth, width, heads, PoM MLP ratio)
SIZES: dict[str, tuple[int, int, int, float]] = {
    # CPU sizes: T trains in seconds (tests), M in minutes, C is the bundled demo's size.
    "T": (2, 64, 2, 3.0),
    "M": (4, 128, 4, 3.0),
    "C": (6, 192, 6, 3.0),
    # DiT sizes (Peebles & Xie 2023, table 1)
    "S": (12, 384, 6, 3.0),
    "B": (12, 768, 12, 3.0),
    "L": (24, 1024, 16, 2.0),
    "XL": (28, 1152, 16, 2.0),
}
PATCHES = (2, 4, 8)
PRESETS: dict[str, dict] = {
    f"DiT-{size}/{patch}": {"depth": d, "width": w, "heads": h, "patch_size": patch, "pom_mlp_ratio": r}
    for size, (d, w, h, r) in SIZES.items()
    for patch in PATCHES
}


def preset_names() -> list[str]:
    return list(PRESETS)


def dit_config(name: str, mixer: str = "pom", **overrides) -> DiTConfig:
    """The :class:`DiTConfig` of preset ``name`` (e.g. ``"DiT-S/2"``) for ``mixer`` (a mixer
    pattern, see ``models/mixers.py``; a pattern with PoM blocks gets PoM's MLP ratio).

    Keyword overrides (``image_size``, ``in_channels``, ``n_classes``, ``pom_variant``,
    ...) replace the preset's values.
    """
    if name not in PRESETS:
        raise ValueError(f"name: unknown preset {name!r}; expected one of {preset_names()}")
    p = PRESETS[name]
    fields = dict(depth=p["depth"], width=p["width"], heads=p["heads"], patch_size=p["patch_size"], mixer=mixer)
    if "pom" in mixer_names(mixer):  # any PoM block: the PoM preset's MLP ratio and gate heads
        fields.update(mlp_ratio=p["pom_mlp_ratio"], pom_degree=2, pom_expand=2,
                      pom_heads=overrides.get("heads", p["heads"]), **POM_ADDITIONS)
    else:
        fields.update(mlp_ratio=4.0)
    fields.update(overrides)
    return DiTConfig(**fields)


def config_for_data(preset: str, mixer: str, sample_shape: tuple[int, ...], n_classes: int, **overrides):
    """The model config for samples of ``sample_shape``: ``(C, H, W)`` images give a
    :class:`DiTConfig` of ``preset`` for ``mixer``, ``(F, C, H, W)`` clips a
    :class:`VideoDiTConfig` of the same size (square frames only); ``overrides`` replace
    preset values. Raises ValueError for shapes no model takes."""
    if len(sample_shape) == 3:
        C, H, W = sample_shape
        video_only = sorted(set(overrides) & VIDEO_ONLY)
        if video_only:
            raise ValueError(f"{video_only[0]}: only for video data; the data are images {tuple(sample_shape)}")
    elif len(sample_shape) == 4:
        frames, C, H, W = sample_shape
    else:
        raise ValueError(f"data: no model takes samples of shape {tuple(sample_shape)}")
    if H != W:
        raise ValueError(f"image_size: the models train on square images or frames, the data has {H}x{W}")
    config = dit_config(preset, mixer=mixer, image_size=H, in_channels=C, n_classes=n_classes,
                        **{k: v for k, v in overrides.items() if k not in VIDEO_ONLY})
    if len(sample_shape) == 3:
        return config
    fields = {**dataclasses.asdict(config), "frames": frames}
    if config.pom_rotary == 2 and "pom_rotary" not in overrides:  # the preset's (row, column) -> (frame, row, column)
        fields["pom_rotary"] = 3
    return VideoDiTConfig(**{**fields, **overrides})

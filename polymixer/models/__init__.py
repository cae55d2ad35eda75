"""Networks built from ``polymixer.nn``: the class-conditional DiT and its size presets."""

from .dit import DiT, DiTConfig
from .io import load_pretrained, save_pretrained
from .presets import PRESETS, dit_config, preset_names

__all__ = ["DiT", "DiTConfig", "PRESETS", "dit_config", "preset_names", "save_pretrained", "load_pretrained"]

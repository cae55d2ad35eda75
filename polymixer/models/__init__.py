"""Networks built from ``polymixer.nn``: the class-conditional image DiT and video DiT, size presets, and the
registry that finds a model class from the ``architecture`` field of its config."""

from .dit import DiT, DiTConfig
from .video_dit import VideoDiT, VideoDiTConfig
from .io import load_pretrained, save_pretrained
from .presets import PRESETS, dit_config, preset_names
from .registry import architectures, build_model, config_from_dict, config_to_dict, register_model

__all__ = ["DiT", "DiTConfig", "VideoDiT", "VideoDiTConfig", "PRESETS", "dit_config", "preset_names", "save_pretrained", "load_pretrained",
           "register_model", "architectures", "build_model", "config_from_dict", "config_to_dict"]

"""Models known by the ``architecture`` field of their config.

Every network class registers itself with its config dataclass::

    @register_model("polymixer.DiT", DiTConfig)
    class DiT(nn.Module): ...

Loading, sampling and training then find the class from a saved config with
:func:`config_from_dict` and :func:`build_model`, with no ``if`` on the class. A config
dataclass serialises with :func:`config_to_dict` (its fields plus ``architecture``).

A registered model class provides ``config`` (its dataclass), ``num_parameters()``, and a
``kind`` class attribute naming its samples (``"image"`` or ``"video"``), which is how the
command line tells an image checkpoint from a video one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

__all__ = ["register_model", "architectures", "config_from_dict", "config_to_dict", "build_model"]

_REGISTRY: dict[str, tuple[type, type[nn.Module]]] = {}


def register_model(architecture: str, config_class: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register ``cls`` under ``architecture`` with its ``config_class``."""
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"config_class: expected a dataclass, got {config_class!r}")

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        known = _REGISTRY.get(architecture)
        if known is not None and known[1] is not cls and known[1].__qualname__ != cls.__qualname__:
            raise ValueError(f"architecture: {architecture!r} is already registered to {known[1].__name__}")
        _REGISTRY[architecture] = (config_class, cls)
        cls.architecture = architecture
        config_class.architecture = architecture
        return cls

    return decorate


def architectures() -> list[str]:
    """The registered architecture names."""
    return sorted(_REGISTRY)


def config_to_dict(config) -> dict:
    """``{"architecture": ..., **fields}`` of a registered config dataclass."""
    return {"architecture": type(config).architecture, **dataclasses.asdict(config)}


def config_from_dict(data: dict, expected: str | None = None):
    """The config dataclass instance that ``data`` (from :func:`config_to_dict`) describes.

    ``expected`` restricts the architecture (e.g. an image loader given a video config).
    Raises ValueError / TypeError naming what is wrong.
    """
    if not isinstance(data, dict):
        raise TypeError(f"config: expected a dict, got {type(data).__name__}")
    data = dict(data)
    arch = data.pop("architecture", "polymixer.DiT")  # configs of the first release had none
    if expected is not None and arch != expected:
        raise ValueError(f"config: architecture {arch!r} is not {expected!r}")
    if arch not in _REGISTRY:
        raise ValueError(f"config: unknown architecture {arch!r}; expected one of {architectures()}")
    config_class = _REGISTRY[arch][0]
    if hasattr(config_class, "upgrade"):  # fields of older releases in today's form
        data = config_class.upgrade(data)
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config: unknown {config_class.__name__} keys {unknown}")
    return config_class(**data)


def build_model(config) -> nn.Module:
    """A new model for a registered config dataclass instance."""
    arch = getattr(type(config), "architecture", None)
    if arch not in _REGISTRY:
        raise TypeError(f"config: expected a registered model config, got {type(config).__name__}")
    return _REGISTRY[arch][1](config)

"""The token mixers a model config can name, and the per-layer mixer pattern.

A config's ``mixer`` field is a *pattern*: comma-separated entries, one per block, repeated
over the depth when shorter. Each entry is the name of a registered mixer, optionally
prefixed by ``frame-local``: such a block mixes inside each frame only (in a video model;
in an image model the whole image is one frame), so it keeps no state across frames.

    "pom"                      every block PoM (a one-entry pattern)
    "attention"                every block attention
    "frame-local pom, pom"     blocks 0, 2, 4, ... mix inside each frame, the others across frames

A mixer is registered with a builder that makes it for a model config::

    @register_mixer("my-mixer")
    def build(config):            # a TransformerConfig
        return MyMixer(config.width)

and is then usable in every model, the command line and saved configs. The mixer itself
follows the token-mixer protocol (:mod:`polymixer.nn.protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..nn import MultiHeadAttention, PolynomialMixer

__all__ = ["register_mixer", "registered_mixers", "build_mixer", "LayerMixer", "parse_mixer_pattern",
           "mixer_names", "legacy_frame_local_pattern", "FRAME_LOCAL"]

FRAME_LOCAL = "frame-local"
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str) -> Callable:
    """Decorator: register ``builder(config) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name or "," in name or " " in name.strip():
        raise ValueError(f"name: expected one word without commas, got {name!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = builder
        return builder

    return decorate


def registered_mixers() -> list[str]:
    """The names a pattern may use."""
    return list(_BUILDERS)


@dataclass(frozen=True)
class LayerMixer:
    """The mixer of one block: a registered ``name``, and whether it stays inside each frame."""

    name: str
    frame_local: bool = False

    def __str__(self) -> str:
        return f"{FRAME_LOCAL} {self.name}" if self.frame_local else self.name


def parse_mixer_pattern(pattern: str, depth: int | None = None) -> list[LayerMixer]:
    """The mixers of a pattern (see the module docstring): its entries, or, with ``depth``,
    one per block, the entries repeated. Raises ValueError naming a bad entry."""
    if not isinstance(pattern, str):
        raise TypeError(f"mixer: expected a string such as 'pom' or 'frame-local pom, pom', got "
                        f"{type(pattern).__name__}")
    entries = []
    for raw in pattern.split(","):
        words = raw.split()
        local = bool(words) and words[0] == FRAME_LOCAL
        if local:
            words = words[1:]
        if len(words) != 1 or words[0] not in _BUILDERS:
            raise ValueError(f"mixer: bad entry {raw.strip()!r} in {pattern!r}; expected one of "
                             f"{registered_mixers()}, optionally after '{FRAME_LOCAL}'")
        entries.append(LayerMixer(words[0], local))
    if depth is None:
        return entries
    return [entries[i % len(entries)] for i in range(depth)]


def mixer_names(pattern: str) -> set[str]:
    """The registered names a pattern uses (``{"pom"}`` for ``"frame-local pom, pom"``)."""
    return {layer.name for layer in parse_mixer_pattern(pattern)}


def legacy_frame_local_pattern(mixer: str, every: int) -> str:
    """The pattern of a config saved with ``frame_local_every=every`` (blocks 0, k, 2k, ...
    frame-local), before patterns existed."""
    if not every:
        return mixer
    return ", ".join([f"{FRAME_LOCAL} {mixer}"] + [mixer] * (every - 1))


def build_mixer(layer: LayerMixer, config) -> nn.Module:
    """The token mixer of ``layer`` for a model ``config`` (a TransformerConfig)."""
    return _BUILDERS[layer.name](config)


@register_mixer("pom")
def _pom(config) -> nn.Module:
    return PolynomialMixer(config.width, degree=config.pom_degree, expand=config.pom_expand,
                           variant=config.pom_variant, heads=config.pom_heads,
                           implementation=config.pom_implementation)


@register_mixer("attention")
def _attention(config) -> nn.Module:
    return MultiHeadAttention(config.width, heads=config.heads, qk_norm=config.qk_norm)

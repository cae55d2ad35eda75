"""Modules built on ``polymixer.ops``: the mixer, attention with the same interface, states."""

from .adapter import PolynomialMultiheadAttention
from .attention import MultiHeadAttention
from .mixer import PolynomialMixer
from .reference_io import to_reference
from .state import MixerState, StateCache

__all__ = [
    "PolynomialMixer",
    "MultiHeadAttention",
    "PolynomialMultiheadAttention",
    "MixerState",
    "StateCache",
    "to_reference",
]

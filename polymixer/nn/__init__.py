"""Modules built on ``polymixer.ops``: the mixer, attention with the same interface, states."""

from .adapter import PolynomialMultiheadAttention, replace_multihead_attention
from .attention import MultiHeadAttention
from .mixer import PolynomialMixer
from .reference_io import to_reference
from .state import MixerState, StateCache

__all__ = [
    "PolynomialMixer",
    "MultiHeadAttention",
    "PolynomialMultiheadAttention",
    "replace_multihead_attention",
    "MixerState",
    "StateCache",
    "to_reference",
]

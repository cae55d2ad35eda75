"""Modules built on ``polymixer.ops``: the mixer, attention with the same interface, states."""

from .adapter import PolynomialMultiheadAttention, replace_multihead_attention
from .attention import KVCache, MultiHeadAttention
from .mixer import PolynomialMixer
from .reference_io import to_reference
from .protocol import StreamingMixer, TokenMixer, can_stream, has_constant_state
from .state import FrameMemoryState, MixerState, StateCache

__all__ = [
    "PolynomialMixer",
    "MultiHeadAttention",
    "KVCache",
    "TokenMixer",
    "StreamingMixer",
    "can_stream",
    "has_constant_state",
    "PolynomialMultiheadAttention",
    "replace_multihead_attention",
    "MixerState",
    "FrameMemoryState",
    "StateCache",
    "to_reference",
]

"""polymixer: the Polynomial Mixer (PoM), a linear-time replacement for attention."""

from .nn import (
    MixerState,
    MultiHeadAttention,
    PolynomialMixer,
    PolynomialMultiheadAttention,
    StateCache,
    replace_multihead_attention,
    to_reference,
)
from .bundled import bundled_checkpoint
from .ops.plan import MixerSettings

__version__ = "0.1.0"

__all__ = [
    "PolynomialMixer",
    "MixerSettings",
    "MultiHeadAttention",
    "PolynomialMultiheadAttention",
    "replace_multihead_attention",
    "MixerState",
    "StateCache",
    "to_reference",
    "bundled_checkpoint",
    "__version__",
]

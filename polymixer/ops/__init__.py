"""Pure tensor functions of the Polynomial Mixer: features, aggregation modes, references."""

from .aggregation import (
    accumulation_dtype,
    mean_block_causal,
    mean_causal,
    mean_dense,
    mean_full,
    mean_packed,
)
from .context import ContextMode, aggregate, dense_context_mask, resolve_context
from .features import power_activation, power_features, product_features
from .reference import reference_aggregate, reference_mean

__all__ = [
    "accumulation_dtype",
    "mean_full",
    "mean_causal",
    "mean_block_causal",
    "mean_packed",
    "mean_dense",
    "ContextMode",
    "resolve_context",
    "aggregate",
    "dense_context_mask",
    "product_features",
    "power_activation",
    "power_features",
    "reference_mean",
    "reference_aggregate",
]

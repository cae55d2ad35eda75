"""Pure tensor functions: context modes and their aggregations (any mixer with a mean
state), the execution plan, the dense references, and the Polynomial Mixer in :mod:`.pom`."""

from .aggregation import (
    Segments,
    accumulation_dtype,
    mean_dense,
    mean_packed,
    segment_aggregate,
)
from .context import (
    BlockCausal,
    Causal,
    ContextMode,
    Dense,
    Full,
    Packed,
    SegmentMode,
    aggregate,
    dense_context_mask,
    resolve_context,
)
from .plan import ExecutionPlan, MixerSettings, choose_path
from .reference import reference_aggregate, reference_mean
from .pom import (
    MixerSpec,
    MixerWeights,
    apply_gate,
    features,
    gate,
    power_activation,
    power_features,
    product_features,
)

__all__ = [
    "accumulation_dtype",
    "Segments",
    "segment_aggregate",
    "mean_packed",
    "mean_dense",
    "ContextMode",
    "SegmentMode",
    "Full",
    "Causal",
    "BlockCausal",
    "Packed",
    "Dense",
    "resolve_context",
    "aggregate",
    "dense_context_mask",
    "MixerSpec",
    "MixerWeights",
    "features",
    "gate",
    "apply_gate",
    "product_features",
    "power_activation",
    "power_features",
    "MixerSettings",
    "ExecutionPlan",
    "choose_path",
    "reference_mean",
    "reference_aggregate",
]

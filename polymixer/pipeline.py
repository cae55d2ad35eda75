"""What a sampler needs besides the network, typed and serialised as ``pipeline.json``.

A training run writes it next to its EMA weights and into every checkpoint; sampling,
export and evaluation read it back. One definition, one set of defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .diffusion import OBJECTIVES, SAMPLERS, make_objective
from .io import CheckpointError, read_json, write_json

__all__ = ["SamplingConfig", "PIPELINE_NAME", "check_guidance"]

PIPELINE_NAME = "pipeline.json"


def check_guidance(name: str, value) -> float:
    """``value`` as a float when it is a classifier-free guidance scale (a finite number >= 0;
    1 is off); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a guidance scale >= 0 (1 = off), got {value!r}")
    return float(value)


@dataclass
class SamplingConfig:
    """How samples of a trained model are drawn and shown.

    Args:
        objective: ``"flow"`` (flow matching) or ``"ddpm"``: the training objective, which
            fixes the samplers that fit (euler/heun or ddim).
        shift: time shift of the flow sampler's grid (the training run's by default).
        data_range: the range of the data the model was trained on (pixels in [-1, 1]).
        latent: for latent models, the VAE to decode with (folder, scaling, channels), else None.
        class_names: the name of each class index.
        dataset: the training data's name (for display).
        frames_per_second: playback rate of generated clips (video models).
        history_noise: the noise level at which frame-by-frame sampling reads the finished
            frames, by default (per-frame-noise video models: the training run's
            ``history_noise``, so that sampling shows the model what training did; 0 = clean).
        guidance: the classifier-free guidance scale sampling uses when none is given
            (``cfg_scale=None``, the CLI without ``--cfg``): the training run's preview scale
            (``sample_cfg``, 2 by default), or what ``polymixer export --guidance`` set
            after measuring (1 = off).
    """

    objective: str = "flow"
    shift: float = 1.0
    data_range: tuple[float, float] = (-1.0, 1.0)
    latent: dict | None = None
    class_names: list[str] | None = None
    dataset: str | None = None
    frames_per_second: float = 8.0
    history_noise: float = 0.0
    guidance: float = 2.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        if not (isinstance(self.shift, (int, float)) and self.shift > 0):
            raise ValueError(f"shift: expected a positive number, got {self.shift!r}")
        lo, hi = (float(v) for v in self.data_range)
        if not lo < hi:
            raise ValueError(f"data_range: expected (low, high) with low < high, got {self.data_range!r}")
        self.data_range = (lo, hi)
        self.shift = float(self.shift)
        if not self.frames_per_second > 0:
            raise ValueError(f"frames_per_second: expected a positive number, got {self.frames_per_second!r}")
        if not (isinstance(self.history_noise, (int, float)) and not isinstance(self.history_noise, bool)
                and 0 <= self.history_noise < 1):
            raise ValueError(f"history_noise: expected a noise level in [0, 1), got {self.history_noise!r}")
        self.history_noise = float(self.history_noise)
        self.guidance = self.guidance_for(self.guidance)

    def guidance_for(self, cfg_scale: float | None) -> float:
        """``cfg_scale``, or this pipeline's ``guidance`` when it is None; ValueError unless a
        finite scale >= 0."""
        if cfg_scale is None:
            return check_guidance("guidance", self.guidance)
        return check_guidance("cfg_scale", cfg_scale)

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers that fit the objective; the first is the default."""
        return SAMPLERS[self.objective]

    def check_sampler(self, sampler: str | None) -> str:
        """``sampler`` or the default one; ValueError if it does not fit the objective."""
        if sampler is None:
            return self.samplers[0]
        if sampler not in self.samplers:
            raise ValueError(
                f"sampler: {sampler!r} does not go with the {self.objective} objective; expected one of {self.samplers}"
            )
        return sampler

    def make_objective(self):
        return make_objective(self.objective)

    def replace(self, **changes) -> "SamplingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["data_range"] = list(self.data_range)
        return d

    @classmethod
    def from_dict(cls, data: dict | None) -> "SamplingConfig":
        """From a ``pipeline.json`` (any missing field takes its default)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise TypeError(f"pipeline: expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"pipeline: unknown keys {unknown}")
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / PIPELINE_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "SamplingConfig":
        """The folder's ``pipeline.json``, or the defaults when it has none."""
        path = Path(folder) / PIPELINE_NAME
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(read_json(path))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc

"""Diffusion objectives (flow matching, DDPM) and samplers (Euler, Heun, DDIM, CFG).

Nothing here knows the network beyond the call ``model(x_t, t, y)``.
"""

from .objectives import DDPM, OBJECTIVES, FlowMatching, make_objective, resolution_shift, time_shift
from .samplers import SAMPLERS, classifier_free_guidance, ddim, euler, flow_times, heun, sample

__all__ = [
    "FlowMatching", "DDPM", "OBJECTIVES", "make_objective", "time_shift", "resolution_shift",
    "SAMPLERS", "classifier_free_guidance", "euler", "heun", "ddim", "sample", "flow_times",
]

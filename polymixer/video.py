"""Generate clips with a video DiT: jointly, or frame after frame at constant memory.

``sample_video(model, pipeline, labels, frames=16, mode="sequential")`` returns clips
``(B, F, C, H, W)`` in the data range. Both modes draw the same noise (one
``(B, C, H, W)`` draw per frame, in frame order, from a generator seeded with ``seed``),
so for a shared-noise model (``noise_levels="clip"``) and the same seed they give the
same video (docs/design.md, section 4):

* ``"joint"``: every frame denoised together, the whole clip in every network call
  (memory and time per call grow with the number of frames).
* ``"sequential"``: one frame at a time. For a shared-noise model, the network is called
  on the new frame only, and for every network evaluation k of the sampler (a step, or
  half a Heun step) and every block it reads, then extends, the running state of the
  finished frames at evaluation k: ``evaluations x blocks`` states of (batch, F_state)
  each, whatever the number of frames. For a per-frame-noise model (diffusion forcing),
  the new frame reads one state per block, fed afterwards from the finished clean frame
  at t = 0 (or, with ``history_noise`` τ > 0, noised to the level τ, as in training against
  drift: the model then never relies on its own frames being exact); ``given_frames``
  (clean frames of a clip to continue) are fed the same way first. ``history_guidance`` w
  guides each frame by the finished frames: ``v_alone + w (v - v_alone)``, v_alone the frame
  drawn as the first of a clip (after classifier-free guidance's rows, both guided).

:func:`iter_video_frames` yields the finished frames one by one, so a caller that
streams them out (to a file, to a screen) keeps only the states in memory.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn

from .diffusion import FlowMatching, sample
from .pipeline import SamplingConfig

__all__ = ["MODES", "video_noise", "iter_video_frames", "sample_video", "check_video_model", "regenerate_frames",
           "check_history_noise", "check_history_guidance"]

MODES = ("sequential", "joint")


def check_video_model(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is a video model."""
    if getattr(model, "kind", None) != "video":
        raise ValueError(f"model: expected a video model, got a {getattr(model, 'kind', type(model).__name__)} model")


def _frame_noise(generator: torch.Generator, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(batch, 1, *shape, generator=generator)


def video_noise(batch: int, frames: int, frame_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise of ``batch`` clips of ``frames`` frames ``frame_shape = (C, H, W)``:
    one draw per frame, in frame order (what both sampling modes use)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([_frame_noise(g, batch, frame_shape) for _ in range(frames)], dim=1)


def check_history_noise(level, cfg) -> float:
    """The level at which a video model of config ``cfg`` reads its finished frames; ValueError
    unless it is a number in [0, 1), and 0 for a model with one noise level per clip."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level < 1:
        raise ValueError(f"history_noise: expected a noise level in [0, 1), got {level!r}")
    if level > 0 and cfg.noise_levels != "frame":
        raise ValueError("history_noise: only for models trained with one noise level per frame "
                         "(noise_levels='frame')")
    return float(level)


def check_history_guidance(weight, cfg, mode: str) -> float:
    """The history guidance weight for a video model of config ``cfg`` sampled in ``mode``
    (None: 1, off); ValueError unless it is a finite number >= 0 and, when not 1, the model
    has one noise level per frame and the mode is sequential."""
    if weight is None:
        return 1.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"history_guidance: expected a finite weight >= 0 (1 = off), got {weight!r}")
    if weight != 1.0:
        if cfg.noise_levels != "frame":
            raise ValueError("history_guidance: only for models trained with one noise level per frame "
                             "(noise_levels='frame'), which learn to draw a frame with no finished frames before it")
        if mode != "sequential":
            raise ValueError("history_guidance: joint sampling reads no finished frames; it is for mode='sequential'")
    return float(weight)


class FrameStream:
    """The network on one frame at a time, reading the states of the finished frames.

    ``per_evaluation=True`` (shared noise): evaluation k of the sampler (which the sampler
    names, ``evaluation=k``) reads and extends its own state, ``states[batch][k]``, the
    frames before at that evaluation. ``False`` (per-frame noise): every evaluation reads the
    state of the finished clean frames without changing it; :meth:`add_clean_frame` extends
    it. States are kept per batch size (the conditional rows, and the doubled rows of
    guidance) and replaced, never changed in place.
    """

    def __init__(self, model: nn.Module, per_evaluation: bool, dtype: torch.dtype, history_noise: float = 0.0,
                 objective=None, generator: torch.Generator | None = None, history_eps: torch.Tensor | None = None,
                 history_guidance: float = 1.0):
        self.model, self.per_evaluation, self.dtype = model, per_evaluation, dtype
        self.history_noise, self.objective, self.generator = history_noise, objective, generator
        self.history_eps = history_eps  # (B, F, C, H, W): the history noise of every frame, else drawn
        self.history_guidance = history_guidance  # per-frame noise: w of v_alone + w (v - v_alone); 1 = off
        self.states: dict[tuple[int, int], object] = {}  # (batch size, evaluation) -> state
        self.clean: dict[int, object] = {}  # batch size -> state of the finished clean frames
        self.empty: dict[int, object] = {}  # batch size -> a state of no frames (history guidance)
        self.fed = 0  # frames fed into the clean states
        self.frame = 0

    def _state(self, table: dict, key, batch: int, device):
        if key not in table:
            table[key] = self.model.init_state(batch, device=device, dtype=self.dtype)
        return table[key]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, evaluation: int) -> torch.Tensor:
        if self.per_evaluation:
            key = (x.shape[0], evaluation)
            out, self.states[key] = self.model.step(x, t, y, self._state(self.states, key, x.shape[0], x.device),
                                                    frame_offset=self.frame)
            return out
        state = self._state(self.clean, x.shape[0], x.shape[0], x.device)
        out = self.model.step(x, t, y, state, frame_offset=self.frame)[0]
        if self.history_guidance != 1.0 and self.fed:
            # the same frame as the first of a clip (no finished frames: the prefix of 0 frames that
            # training draws), then away from it by the guidance weight, as classifier-free guidance
            # moves away from the null label
            empty = self._state(self.empty, x.shape[0], x.shape[0], x.device)
            alone = self.model.step(x, t, y, empty, frame_offset=0)[0]
            out = alone + self.history_guidance * (out - alone)
        return out

    @torch.no_grad()
    def add_clean_frame(self, frame: torch.Tensor, cond, guided: bool) -> None:
        """Feed a finished clean frame ``(B, 1, C, H, W)`` at t = 0 (or noised to
        ``history_noise``) into the clean states of the conditional rows and, for guidance,
        of the doubled rows (``cond`` then its null). The noise is ``history_eps`` at the
        frames from :attr:`frame` on when given, else drawn from ``generator``."""
        B = frame.shape[0]
        level = 0.0
        if self.history_noise > 0:
            if self.history_eps is not None:
                eps = self.history_eps[:, self.frame:self.frame + frame.shape[1]]
            else:
                eps = torch.randn(frame.shape, generator=self.generator)
            eps = eps.to(device=frame.device, dtype=frame.dtype)
            frame, level = self.objective.add_noise(frame, self.history_noise, eps), self.history_noise
        for batch in ([B, 2 * B] if guided else [B]):
            rows = frame if batch == B else torch.cat([frame, frame])
            labels = cond if batch == B else cond.cat(cond.null())
            t = torch.full((batch, 1), level, device=frame.device, dtype=frame.dtype)
            state = self._state(self.clean, batch, batch, frame.device)
            self.clean[batch] = self.model.step(rows, t, labels, state, frame_offset=self.frame)[1]
        self.fed += frame.shape[1]


def iter_video_frames(
    model: nn.Module,
    pipeline: SamplingConfig,
    labels: torch.Tensor,
    *,
    frames: int,
    mode: str = "sequential",
    steps: int = 30,
    cfg_scale: float | None = None,
    sampler: str | None = None,
    seed: int = 0,
    frame_size: int | None = None,
    given_frames: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    history_noise: float | None = None,
    history_eps: torch.Tensor | None = None,
    history_guidance: float | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the frames ``(B, 1, C, H, W)`` of clips for ``labels: (B,)``, first to last,
    in the model's dtype, before clamping to the data range. ``given_frames: (B, K, C, H, W)``
    clean frames to continue (per-frame-noise models, sequential mode): they are yielded
    first, then ``frames - K`` generated ones. ``noise: (B, frames, C, H, W)`` replaces the
    seeded draws (``seed`` is then unused): rows of :func:`video_noise` for ``N >= B`` clips
    give each clip the noise it gets when all ``N`` are made at once, whatever the batching.
    ``history_noise``: per-frame-noise models read each finished frame noised to this level
    (0 = clean; its noise drawn from ``seed + 1``); None (default): ``pipeline.history_noise``,
    the level the model was trained with. ``history_eps: (B, frames, C, H, W)`` replaces the
    seeded draws of that noise, as ``noise`` does for the starting noise: with temporal
    patch 1, rows of ``video_noise(N, frames, (C, H, W), seed + 1)`` give each of ``N`` clips
    the history noise it gets when all are made at once with ``seed``. ``cfg_scale``: the guidance scale (1 = off); None
    (default): ``pipeline.guidance``. ``history_guidance``: per-frame-noise models, sequential
    mode: guidance by the finished frames, as classifier-free guidance is by the label. Each
    network call on a frame after the first is made twice, reading the finished frames (v) and
    reading none, the frame as the first of a clip (v_alone, what training's empty prefixes
    teach), and the sampler gets ``v_alone + w (v - v_alone)`` (on both rows of
    classifier-free guidance): w > 1 leans on the finished frames more, 0 ignores them; twice
    the network calls. None or 1 (default): off.
    See the module docstring for the modes."""
    check_video_model(model)
    cfg = model.config
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "sequential" and not model.can_stream():
        raise ValueError("mode: a mixer of this model cannot stream (no init_state/step), so it cannot generate "
                         "frame by frame; use mode='joint'")
    model.check_frames(frames)
    size = frame_size or cfg.image_size
    model.check_frame_size(size, size)
    cond = model.condition(labels)  # labels (B,) or ClassLabels: the conditioning object
    sampler = pipeline.check_sampler(sampler)
    cfg_scale = pipeline.guidance_for(cfg_scale)
    objective = pipeline.make_objective()
    shape = (cfg.in_channels, size, size)
    B = cond.batch_size
    known = 0
    if given_frames is not None:
        if cfg.noise_levels != "frame":
            raise ValueError("given_frames: this model was trained with one noise level per clip, so a frame depends on "
                             "the noisy states of earlier frames, which a given clip does not have; continuing a "
                             "clip needs a model trained with noise_levels='frame'")
        if mode != "sequential":
            raise ValueError("given_frames: continuing a clip needs mode='sequential'")
        model.check_clip(given_frames)
        if given_frames.shape[0] != B or tuple(given_frames.shape[2:]) != shape:
            raise ValueError(f"given_frames: expected clean frames ({B}, K, {', '.join(map(str, shape))}), "
                             f"got {tuple(given_frames.shape)}")
        known = given_frames.shape[1]
        if known >= frames:
            raise ValueError(f"frames: {frames} frames asked for, but given_frames already has {known}")
    if history_noise is None:
        history_noise = pipeline.history_noise if cfg.noise_levels == "frame" else 0.0
    check_history_noise(history_noise, cfg)
    history_guidance = check_history_guidance(history_guidance, cfg, mode)
    for name, given in (("noise", noise), ("history_eps", history_eps)):
        if given is not None and tuple(given.shape) != (B, frames, *shape):
            raise ValueError(f"{name}: expected ({B}, {frames}, {', '.join(map(str, shape))}) for {B} clips of "
                             f"{frames} frames, got {tuple(given.shape)}")
    tp = cfg.temporal_patch
    dtype = next(model.parameters()).dtype
    cond = cond.to(device)
    run = dict(objective=objective, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
               shift=pipeline.shift, clip=None if pipeline.latent else 1.0)
    gen = torch.Generator().manual_seed(seed)

    def draw(first: int, count: int) -> torch.Tensor:  # the noise of frames first .. first + count - 1
        if noise is not None:
            return noise[:, first:first + count]
        return torch.cat([_frame_noise(gen, B, shape) for _ in range(count)], dim=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if mode == "joint":
                clip = sample(model, draw(0, frames).to(device=device, dtype=dtype), cond, progress=progress, **run)
                yield from clip.split(1, dim=1)
                return
            streamed = FrameStream(model, per_evaluation=cfg.noise_levels == "clip",
                                   dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                                   history_noise=float(history_noise), objective=objective,
                                   generator=torch.Generator().manual_seed(seed + 1), history_eps=history_eps,
                                   history_guidance=float(history_guidance))
            guided = cfg_scale != 1.0
            from tqdm.auto import tqdm

            for f in tqdm(range(0, frames, tp), desc="frames", disable=not progress, leave=False):
                streamed.frame = f
                frame_noise = draw(f, tp)
                if f < known:
                    frame = given_frames[:, f:f + tp].to(device=device, dtype=dtype)
                else:
                    frame = sample(streamed, frame_noise.to(device=device, dtype=dtype), cond, indexed=True, **run)
                if cfg.noise_levels == "frame":
                    streamed.add_clean_frame(frame, cond, guided)
                yield from frame.split(1, dim=1)
    finally:
        model.train(was_training)


@torch.no_grad()
def regenerate_frames(model: nn.Module, objective, frames: torch.Tensor, cond, levels: torch.Tensor, *,
                      noise: torch.Tensor, history_noise: float = 0.0, history_eps: torch.Tensor | None = None,
                      steps: int = 2) -> torch.Tensor:
    """The model's own version of the clean frames ``frames: (B, K, C, H, W)`` of a clip,
    made frame after frame the way sequential sampling makes a clip (training on a model's
    own rollouts, ``TrainConfig.history_rollout``).

    Frame k is ``frames[:, k]`` noised to ``levels[:, k]`` (``levels: (B, K)`` in [0, 1],
    with ``noise[:, k]``) and integrated back to 0 by ``steps`` Euler steps of the flow
    model, reading the streaming states of the regenerated frames before it; each is fed
    into the states after it is made, noised to ``history_noise`` with ``history_eps[:, k]``
    (as :func:`iter_video_frames` feeds a finished frame). A level of 0 gives the frame back
    unchanged. ``cond``: the conditioning object of the B clips. Equal to the same
    integration written with the parallel call on the clip of the fed frames before (the
    model is block-causal). Returns ``(B, K, C, H, W)`` in the dtype of ``frames``; the
    model's training mode is restored."""
    if frames.dim() != 5 or levels.shape != frames.shape[:2] or noise.shape != frames.shape:
        raise ValueError(f"frames, levels, noise: expected (B, K, C, H, W), (B, K) and (B, K, C, H, W), got "
                         f"{tuple(frames.shape)}, {tuple(levels.shape)} and {tuple(noise.shape)}")
    if history_noise > 0 and (history_eps is None or history_eps.shape != frames.shape):
        raise ValueError("history_eps: the noise of the fed frames, shaped like frames, is needed with history_noise > 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if not isinstance(objective, FlowMatching):
        raise TypeError(f"objective: the frames are integrated as a flow; expected FlowMatching, got "
                        f"{type(objective).__name__}")
    B, K = frames.shape[:2]
    was_training = model.training
    model.eval()
    try:
        dtype = torch.float64 if frames.dtype == torch.float64 else torch.float32
        state = model.init_state(B, device=frames.device, dtype=dtype)
        out = []
        fed_level = torch.full((B, 1), float(history_noise), device=frames.device, dtype=frames.dtype)
        for k in range(K):
            level = levels[:, k].to(frames.dtype)
            x = objective.add_noise(frames[:, k:k + 1], level, noise[:, k:k + 1])
            for j in range(steps):
                t0, t1 = level * (1 - j / steps), level * (1 - (j + 1) / steps)
                v = model.step(x, t0[:, None], cond, state, frame_offset=k)[0]
                x = x + (t1 - t0).view(B, 1, 1, 1, 1) * v
            out.append(x)
            if k < K - 1:  # feed it to the frames after it
                fed = x if history_noise == 0 else objective.add_noise(x, fed_level[:, 0], history_eps[:, k:k + 1])
                state = model.step(fed, fed_level, cond, state, frame_offset=k)[1]
        return torch.cat(out, dim=1)
    finally:
        model.train(was_training)


def sample_video(model: nn.Module, pipeline: SamplingConfig, labels: torch.Tensor, *, frames: int,
                 mode: str = "sequential", **kwargs) -> torch.Tensor:
    """Clips ``(B, frames, C, H, W)`` in the data range (float32 on the CPU) for ``labels: (B,)``;
    keyword arguments as for :func:`iter_video_frames`."""
    out = [f.float().cpu() for f in iter_video_frames(model, pipeline, labels, frames=frames, mode=mode, **kwargs)]
    lo, hi = pipeline.data_range
    return torch.cat(out, dim=1).clamp(lo, hi)

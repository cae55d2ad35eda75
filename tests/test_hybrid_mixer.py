"""Hybrid blocks: mixers summed in parallel (``"pom + frame-local attention"``), each member
frame-local or not; streaming equals the parallel forward, and the state stays constant
when only frame-local members lack one."""

import pytest
import torch

from polymixer.models import VideoDiT, VideoDiTConfig, build_model
from polymixer.models.mixers import MixerSum, StateTuple, mixer_names, parse_mixer_pattern
from polymixer.models.presets import dit_config
from polymixer.pipeline import SamplingConfig
from polymixer.video import sample_video


def test_pattern_of_hybrids():
    layers = parse_mixer_pattern("pom + frame-local attention, frame-local pom", depth=3)
    assert [str(layer) for layer in layers] == ["pom + frame-local attention", "frame-local pom",
                                                "pom + frame-local attention"]
    assert layers[0].hybrid and not layers[1].hybrid and layers[1].frame_local
    assert mixer_names("pom + frame-local attention") == {"pom", "attention"}
    for bad in ("pom +", "+ pom", "pom + nope", "frame-local + pom"):
        with pytest.raises(ValueError, match="mixer: bad entry"):
            parse_mixer_pattern(bad)


def _video(mixer, noise_levels="clip"):
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=4, mixer=mixer, noise_levels=noise_levels, n_classes=10))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.double().eval()


@pytest.mark.parametrize("mixer,constant", [("pom + frame-local attention", True), ("pom + attention", False),
                                            ("frame-local pom + attention", False)])
@pytest.mark.parametrize("noise_levels", ["clip", "frame"])
def test_hybrid_streams_exactly(mixer, constant, noise_levels):
    model = _video(mixer, noise_levels)
    assert isinstance(model.blocks[0].mixer, MixerSum)
    assert model.can_stream() and model.has_constant_state() == constant
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand((2, 5) if noise_levels == "frame" else (2,), generator=g, dtype=torch.float64)
    y = torch.tensor([3, 7])
    joint = model(x, t, y)
    state = model.init_state(2, dtype=torch.float64)
    outs = []
    for f in range(5):
        out, state = model.step(x[:, f:f + 1], t[:, f:f + 1] if t.dim() == 2 else t, y, state, frame_offset=f)
        outs.append(out)
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    assert isinstance(state["0"], StateTuple)
    local = [m.frame_local for m in model.blocks[0].layer.members]
    assert [s is None for s in state["0"].states] == local
    # frames never see later ones, and do see earlier ones
    x2 = x.clone()
    x2[:, 2] += 1
    changed = (model(x2, t, y) - joint).abs().amax(dim=(2, 3, 4))
    assert (changed[:, :2] == 0).all() and (changed[:, 2:] > 1e-6).all()


def test_hybrid_sequential_sampling_equals_joint():
    model = _video("pom + frame-local attention")
    kw = dict(frames=4, steps=3, cfg_scale=2.0, sampler="heun", seed=3)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 5]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 5]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10


def test_hybrid_image_block_sums_its_members():
    torch.manual_seed(0)
    model = build_model(dit_config("DiT-T/4", "pom + frame-local attention", image_size=16, in_channels=1,
                                   n_classes=3))
    mixer = model.blocks[0].mixer
    h = torch.randn(2, 16, model.config.width)
    # an image is one frame: the frame-local member mixes it whole
    torch.testing.assert_close(mixer(h), mixer.mixers[0](h) + mixer.mixers[1](h))
    out = model(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 2]))
    assert out.shape == (2, 1, 16, 16)
    assert model.config.mlp_ratio == 3.0  # a pattern with PoM blocks gets PoM's preset MLP ratio

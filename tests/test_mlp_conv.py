"""The depthwise convolution inside the MLP (``mlp_conv``, Mix-FFN): identity at start,
local in the grid, per frame for video, and exact for frame-by-frame video sampling."""

import pytest
import torch

from polymixer.models import build_model
from polymixer.models.presets import dit_config
from polymixer.models.video_dit import VideoDiTConfig
from polymixer.models.blocks import MLP


def _perturb(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("mixer", ["pom", "attention"])
def test_identity_at_init(mixer):
    torch.manual_seed(0)
    plain = build_model(dit_config("DiT-T/4", mixer, image_size=16, in_channels=1, n_classes=3, mlp_conv=0))
    conv = build_model(dit_config("DiT-T/4", mixer, image_size=16, in_channels=1, n_classes=3, mlp_conv=3))
    _perturb(plain)
    state = {k: v for k, v in conv.state_dict().items() if ".mlp.conv." in k}
    conv.load_state_dict({**plain.state_dict(), **state})
    x = torch.randn(2, 1, 16, 16)
    t, y = torch.tensor([0.2, 0.7]), torch.tensor([0, 3])
    torch.testing.assert_close(conv(x, t, y), plain(x, t, y), rtol=1e-6, atol=1e-6)
    assert conv.num_parameters() > plain.num_parameters()


def test_mlp_conv_is_local_per_grid():
    mlp = MLP(4, 6, conv=3)
    with torch.no_grad():
        mlp.conv.weight.normal_()
    x = torch.randn(1, 2 * 16, 4)  # two 4x4 grids (frames)
    base = mlp(x, (4, 4))
    x2 = x.clone()
    x2[0, 0] += 1.0  # token (0, 0) of the first grid
    changed = (mlp(x2, (4, 4)) - base).abs().sum(-1)[0] > 0
    expected = torch.zeros(32, dtype=torch.bool)
    expected[[0, 1, 4, 5]] = True  # itself and its 3x3 neighbours in the first grid only
    assert torch.equal(changed, expected)
    with pytest.raises(ValueError, match="grid"):
        mlp(x)
    with pytest.raises(ValueError, match="grid"):
        mlp(x, (3, 3))


@pytest.mark.parametrize("bad", [2, -1, True, 1.5])
def test_bad_mlp_conv(bad):
    with pytest.raises((ValueError, TypeError), match="mlp_conv"):
        dit_config("DiT-T/4", "pom", mlp_conv=bad)


def _video_model(noise_levels):
    torch.manual_seed(0)
    cfg = VideoDiTConfig(depth=2, width=32, heads=2, patch_size=4, image_size=8, frames=3, in_channels=1,
                         n_classes=3, mlp_ratio=2.0, noise_levels=noise_levels, mlp_conv=3,
                         mixer="frame-local pom, pom")
    model = build_model(cfg).double()
    _perturb(model)
    return model


def test_video_sequential_sampling_equals_joint_with_conv():
    from polymixer.pipeline import SamplingConfig
    from polymixer.video import sample_video

    model = _video_model("clip")
    kw = dict(frames=3, steps=2, cfg_scale=1.5, seed=0)
    seq = sample_video(model, SamplingConfig(), torch.tensor([0, 2]), mode="sequential", **kw)
    joint = sample_video(model, SamplingConfig(), torch.tensor([0, 2]), mode="joint", **kw)
    torch.testing.assert_close(seq, joint, rtol=0, atol=1e-10)


def test_video_streaming_forward_equals_joint_with_conv():
    model = _video_model("frame")
    x = torch.randn(2, 3, 1, 8, 8, dtype=torch.float64)
    t = torch.rand(2, 3, dtype=torch.float64)
    y = torch.tensor([1, 2])
    joint = model(x, t, y)
    streamed, _ = model.step(x, t, y, model.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(streamed, joint, rtol=0, atol=1e-10)


def test_pom_presets_carry_the_local_detail_additions():
    from polymixer.models.presets import POM_ADDITIONS, config_for_data
    from polymixer.models.registry import config_from_dict, config_to_dict

    pom = dit_config("DiT-T/4", "pom")
    assert (pom.mlp_conv, pom.pom_rotary) == (POM_ADDITIONS["mlp_conv"], 2)
    hybrid = dit_config("DiT-T/4", "frame-local pom, attention")
    assert (hybrid.mlp_conv, hybrid.pom_rotary) == (3, 2)
    attention = dit_config("DiT-T/4", "attention")
    assert (attention.mlp_conv, attention.pom_rotary) == (0, 0)  # the baseline DiT is unchanged
    plain = dit_config("DiT-T/4", "pom", mlp_conv=0, pom_rotary=0)
    assert (plain.mlp_conv, plain.pom_rotary) == (0, 0)
    video = config_for_data("DiT-T/4", "pom", (4, 1, 16, 16), 3)
    assert (video.mlp_conv, video.pom_rotary) == (3, 3)  # (frame, row, column)
    assert config_for_data("DiT-T/4", "pom", (4, 1, 16, 16), 3, pom_rotary=0).pom_rotary == 0
    assert config_for_data("DiT-T/4", "attention", (4, 1, 16, 16), 3).pom_rotary == 0
    # a saved config without the new fields (written before they existed) loads with both off
    saved = {k: v for k, v in config_to_dict(pom).items() if k not in ("mlp_conv", "pom_rotary")}
    old = config_from_dict(saved)
    assert (old.mlp_conv, old.pom_rotary) == (0, 0)


@pytest.mark.parametrize("mixer", ["pom", "attention"])
def test_init_from_a_model_without_convs(mixer):
    from polymixer.models.io import add_mlp_convs, load_state_checked

    torch.manual_seed(0)
    kw = dict(image_size=16, in_channels=1, n_classes=3, pom_rotary=0)
    source = build_model(dit_config("DiT-T/4", mixer, mlp_conv=0, **kw))
    _perturb(source)
    target = build_model(dit_config("DiT-T/4", mixer, mlp_conv=3, **kw))
    with pytest.raises(Exception, match="missing"):
        load_state_checked(target, source.state_dict(), "source")
    state, added = add_mlp_convs(target, source.state_dict())
    assert added and all(".mlp.conv." in name for name in added)
    load_state_checked(target, state, "source")
    x = torch.randn(2, 1, 16, 16)
    t, y = torch.tensor([0.2, 0.7]), torch.tensor([0, 2])
    torch.testing.assert_close(target(x, t, y), source(x, t, y), rtol=1e-6, atol=1e-6)  # same function at step 0
    assert add_mlp_convs(target, target.state_dict())[1] == []

"""Time positions of the video DiT: the absolute sin-cos frame index (default) or none, so
that with relative rotary positions (pom_rotary=3) the model depends on frame differences
only and a clip can run past the training length at positions it never saw."""

import pytest
import torch

from polymixer.models import VideoDiT, VideoDiTConfig

from helpers import random_weights


def _model(frame_embedding, rotary):
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=4, n_classes=10, pom_rotary=rotary,
                                    frame_embedding=frame_embedding))
    return random_weights(model, torch.float64)


def test_no_absolute_time_with_relative_rotary_is_shift_invariant():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 1, 8, 8, generator=g, dtype=torch.float64)
    t, y = torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([1, 4])
    relative = _model("none", 3)
    base = relative(x, t, y)
    for offset in (1, 7, 120):  # far past the 4 training frames
        assert (relative(x, t, y, frame_offset=offset) - base).abs().max() < 1e-12
    # streaming at a late offset equals the joint forward there too
    state = relative.init_state(2, dtype=torch.float64)
    outs = []
    for f in range(4):
        out, state = relative.step(x[:, f:f + 1], t, y, state, frame_offset=100 + f)
        outs.append(out)
    assert (torch.cat(outs, 1) - base).abs().max() < 1e-12
    # the absolute sin-cos index makes the output depend on where the clip starts
    absolute = _model("sincos", 3)
    assert (absolute(x, t, y, frame_offset=7) - absolute(x, t, y)).abs().max() > 1e-4


def test_frame_embedding_is_checked_and_defaults_to_sincos():
    assert VideoDiTConfig().frame_embedding == "sincos"
    with pytest.raises(ValueError, match="frame_embedding"):
        VideoDiTConfig(frame_embedding="learned")

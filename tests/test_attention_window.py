"""Attention with a rolling window of blocks (frames): the parallel block-causal forward
reads the last `window` blocks, and streaming with a rolling key-value cache of those
blocks equals it, at a constant cache size."""

import pytest
import torch

from polymixer.nn import MultiHeadAttention
from polymixer.ops.context import dense_context_mask, resolve_context

from helpers import random_weights


@pytest.mark.parametrize("window", [1, 2, 3])
def test_rolling_cache_equals_windowed_block_causal(window):
    torch.manual_seed(0)
    attn = MultiHeadAttention(12, heads=3, window=window).double()
    x = torch.randn(2, 6 * 5, 12, dtype=torch.float64)
    joint = attn(x, block_size=5)
    state, outs, sizes = attn.init_state(2, dtype=torch.float64), [], []
    for f in range(6):
        y, state = attn.step(x[:, 5 * f:5 * f + 5], state)
        outs.append(y)
        sizes.append(state.keys.shape[2])
    assert (torch.cat(outs, 1) - joint).abs().max() < 1e-12
    assert sizes[-1] == sizes[window - 1] == 5 * window and attn.constant_state


def test_window_is_the_oracle_mask_and_none_is_unchanged():
    torch.manual_seed(1)
    full = MultiHeadAttention(8, heads=2).double()
    windowed = MultiHeadAttention(8, heads=2, window=2).double()
    windowed.load_state_dict(full.state_dict())
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    mode = resolve_context(1, 12, 12, block_size=3)
    ids = torch.arange(12) // 3
    oracle = dense_context_mask(mode, 1, 12, 12) & (ids[None, None] > ids[None, :, None] - 2)
    assert torch.allclose(windowed(x, block_size=3), full(x, mask=oracle), atol=1e-12)
    assert not full.constant_state and (full(x, block_size=3) - windowed(x, block_size=3)).abs().max() > 1e-6
    # without blocks the window changes nothing
    assert torch.equal(windowed(x), full(x))
    with pytest.raises(ValueError, match="window"):
        MultiHeadAttention(8, heads=2, window=0)


def test_video_dit_with_a_rolling_attention_window():
    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig
    from polymixer.video import sample_video

    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=4, width=16, depth=2, heads=2,
                                    mlp_ratio=2.0, frames=3, mixer="attention", attention_window=2, n_classes=4))
    model = random_weights(model, torch.float64, eval=False)
    g = torch.Generator().manual_seed(1)
    assert model.has_constant_state() and model.default_sampling_mode() == "sequential"
    kw = dict(frames=5, steps=2, cfg_scale=2.0, seed=0)
    joint = sample_video(model, SamplingConfig(), torch.tensor([1, 3]), mode="joint", **kw)
    seq = sample_video(model, SamplingConfig(), torch.tensor([1, 3]), mode="sequential", **kw)
    assert (seq - joint).abs().max() < 1e-10
    # a window of 2 frames per block, 2 blocks: frame 0 reaches frames 1 and 2, never 3 and 4
    x = torch.randn(1, 5, 1, 8, 8, dtype=torch.float64, generator=g)
    x2 = x.clone()
    x2[:, 0] += 1
    t, y = torch.tensor([0.5], dtype=torch.float64), torch.tensor([2])
    diff = (model(x2, t, y) - model(x, t, y)).abs().amax(dim=(2, 3, 4))[0]
    assert diff[1] > 1e-6 and diff[2] > 1e-6 and diff[3] == 0 and diff[4] == 0
    with pytest.raises(ValueError, match="attention_window"):
        VideoDiTConfig(attention_window=-1)

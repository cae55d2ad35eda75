"""Attention with a rolling window of blocks (frames): the parallel block-causal forward
reads the last `window` blocks, and streaming with a rolling key-value cache of those
blocks equals it, at a constant cache size."""

import pytest
import torch

from polymixer.nn import MultiHeadAttention
from polymixer.ops.context import dense_context_mask, resolve_context


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

"""Streaming state: block-by-block equals the parallel block-causal forward."""

import io

import pytest
import torch
from torch import nn

from polymixer import MixerState, PolynomialMixer, StateCache


def _random_split(n, gen):
    sizes, rest = [], n
    while rest:
        s = min(rest, int(torch.randint(1, 12, (1,), generator=gen)))
        sizes.append(s)
        rest -= s
    return sizes


@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 1), ("power", 6)])
@pytest.mark.parametrize("trial", range(3))
def test_streaming_equals_parallel_for_random_splits(variant, heads, trial):
    gen = torch.Generator().manual_seed(trial)
    mixer = PolynomialMixer(60, variant=variant, heads=heads).double()
    x = torch.randn(2, 63, 60, dtype=torch.float64, generator=gen)
    sizes = _random_split(63, gen)
    state = mixer.init_state(2)
    outs = []
    for block in x.split(sizes, dim=1):
        y, state = mixer.step(block, state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), mixer(x, block_lengths=sizes))
    assert state.count.tolist() == [63.0, 63.0]
    assert state.total.dtype == torch.float64  # a float64 mixer streams in float64 (docs/design.md, section 3)
    torch.testing.assert_close(state.total, mixer.features(x).sum(1), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("variant,heads", [("product", 1), ("power", 6)])
def test_float64_stream_equals_float64_parallel_to_1e12(variant, heads):
    """docs/design.md, section 3: a float64 stream keeps float64 sums and equals the float64 parallel
    block-causal form to ~1e-12 (a float32 state would leave about 1e-7)."""
    gen = torch.Generator().manual_seed(7)
    mixer = PolynomialMixer(60, degree=3, variant=variant, heads=heads).double()
    x = torch.randn(2, 97, 60, dtype=torch.float64, generator=gen)
    sizes = _random_split(97, gen)
    state = mixer.init_state(2)
    assert state.total.dtype == torch.float64 and state.count.dtype == torch.float64
    outs = []
    for block in x.split(sizes, dim=1):
        y, state = mixer.step(block, state)
        outs.append(y)
    assert state.total.dtype == torch.float64
    parallel = mixer(x, block_lengths=sizes)
    torch.testing.assert_close(torch.cat(outs, 1), parallel, rtol=1e-12, atol=1e-12)
    # reading a state through forward(state=...) too
    _, head = mixer.step(x[:, :40], mixer.init_state(2))
    torch.testing.assert_close(mixer(x[:, 40:], causal=True, state=head),
                               mixer(x, block_lengths=[40] + [1] * 57)[:, 40:], rtol=1e-12, atol=1e-12)
    # float32 is the floor, and an explicit dtype wins
    assert mixer.float().init_state(2).total.dtype == torch.float32
    assert mixer.to(torch.bfloat16).init_state(2).total.dtype == torch.float32
    assert mixer.init_state(2, dtype=torch.float64).total.dtype == torch.float64
    assert StateCache.for_model(nn.Sequential(mixer.double()), 2)["0"].total.dtype == torch.float64


def test_single_token_blocks_equal_causal():
    mixer = PolynomialMixer(60).double()
    x = torch.randn(2, 20, 60, dtype=torch.float64)
    state, outs = mixer.init_state(2), []
    for t in range(20):
        y, state = mixer.step(x[:, t:t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), mixer(x, causal=True))


def test_fixed_frames_equal_block_size_and_state_size_is_constant():
    mixer = PolynomialMixer(32)
    x = torch.randn(2, 10 * 16, 32)
    state, outs = mixer.init_state(2), []
    first_bytes = state.nbytes()
    for frame in x.split(16, dim=1):
        y, state = mixer.step(frame, state)
        outs.append(y)
        assert state.nbytes() == first_bytes
    torch.testing.assert_close(torch.cat(outs, 1), mixer(x, block_size=16), rtol=1e-4, atol=1e-5)


def test_step_with_padding_mask_leaves_padding_out():
    mixer = PolynomialMixer(16).double()
    a = torch.randn(1, 5, 16, dtype=torch.float64)
    b = torch.randn(1, 3, 16, dtype=torch.float64)
    pad = torch.zeros(1, 5, 16, dtype=torch.float64)
    state = mixer.init_state(1)
    _, s1 = mixer.step(torch.cat([a, pad[:, :2]], 1), state, context_mask=torch.tensor([[1, 1, 1, 1, 1, 0, 0]]).bool())
    _, s2 = mixer.step(a, state)
    torch.testing.assert_close(s1.total, s2.total)
    assert s1.count.tolist() == [5.0]
    y1, _ = mixer.step(b, s1)
    y2, _ = mixer.step(b, s2)
    torch.testing.assert_close(y1, y2)


def test_forward_with_state_reads_the_past():
    mixer = PolynomialMixer(16).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    _, state = mixer.step(x[:, :5], mixer.init_state(2))
    torch.testing.assert_close(mixer(x[:, 5:], causal=True, state=state), mixer(x, block_lengths=[5] + [1] * 7)[:, 5:])
    torch.testing.assert_close(mixer(x[:, 5:], block_size=3, state=state), mixer(x, block_lengths=[5, 3, 3, 1])[:, 5:])


def test_step_does_not_modify_the_given_state():
    mixer = PolynomialMixer(16)
    state = mixer.init_state(2)
    _, new = mixer.step(torch.randn(2, 4, 16), state)
    assert state.count.sum() == 0 and state.total.abs().sum() == 0
    assert new.count.tolist() == [4.0, 4.0]


def test_state_save_load_move_and_reset():
    mixer = PolynomialMixer(16)
    _, state = mixer.step(torch.randn(3, 4, 16), mixer.init_state(3))
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    loaded = MixerState.from_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(loaded.total, state.total) and torch.equal(loaded.count, state.count)
    moved = state.to("meta")
    assert moved.device.type == "meta" and moved.total.dtype == torch.float32
    copy = state.clone().reset_(torch.tensor([True, False, False]))
    assert copy.count.tolist() == [0.0, 4.0, 4.0] and copy.total[0].abs().sum() == 0
    assert torch.equal(copy.total[1:], state.total[1:])
    state.reset_()
    assert state.count.sum() == 0 and state.total.abs().sum() == 0


def test_state_cache_over_a_network():
    net = nn.ModuleDict({"a": PolynomialMixer(16), "b": nn.Sequential(nn.Linear(16, 16), PolynomialMixer(16, variant="power"))})
    cache = StateCache.for_model(net, batch_size=2)
    assert sorted(cache) == ["a", "b.1"]
    x = torch.randn(2, 3, 16)
    _, cache["a"] = net["a"].step(x, cache["a"])
    flat = cache.state_dict()
    again = StateCache.from_state_dict(flat)
    assert torch.equal(again["a"].total, cache["a"].total)
    assert cache.nbytes() == sum(s.nbytes() for s in cache.states.values())
    cache.reset_()
    assert cache["a"].count.sum() == 0
    with pytest.raises(ValueError, match="no mixer"):
        StateCache.for_model(nn.Linear(2, 2), 1)

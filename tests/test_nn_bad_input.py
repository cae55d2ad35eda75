"""Every public entry point validates its input and names the argument."""

import pytest
import torch

from polymixer import MultiHeadAttention, PolynomialMixer


@pytest.fixture
def mixer():
    return PolynomialMixer(16)


@pytest.mark.parametrize("kwargs,match", [
    ({"dim": 0}, "dim"),
    ({"dim": 16, "degree": 0}, "degree"),
    ({"dim": 16, "degree": 9}, "degree"),
    ({"dim": 16, "expand": 0}, "expand"),
    ({"dim": 16, "expand": 1.5}, "expand"),
    ({"dim": 16, "variant": "sum"}, "variant"),
    ({"dim": 16, "heads": 0}, "heads"),
    ({"dim": 15, "variant": "power", "expand": 1, "heads": 4}, "heads"),
])
def test_constructor_rejects(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PolynomialMixer(**kwargs)


def test_attention_constructor_rejects():
    with pytest.raises(ValueError, match="heads"):
        MultiHeadAttention(30, heads=4)


@pytest.mark.parametrize("module", [PolynomialMixer(16), MultiHeadAttention(16, heads=2)], ids=["pom", "sdpa"])
def test_forward_rejects(module):
    x = torch.randn(2, 8, 16)
    cases = [
        ((torch.randn(8, 16),), {}, ValueError, "x: expected shape"),
        ((torch.randn(2, 8, 12),), {}, ValueError, "x: expected width"),
        ((torch.zeros(2, 8, 16, dtype=torch.long),), {}, TypeError, "floating"),
        (([1.0],), {}, TypeError, "x: expected a torch.Tensor"),
        ((x, torch.randn(3, 5, 16)), {}, ValueError, "context: expected batch size"),
        ((x, torch.randn(2, 5, 8)), {}, ValueError, "context: expected width"),
        ((x,), {"context_mask": torch.ones(2, 7, dtype=torch.bool)}, ValueError, "context_mask: expected shape"),
        ((x,), {"context_mask": torch.ones(2, 8)}, TypeError, "context_mask: expected a bool"),
        ((x,), {"mask": torch.ones(2, 8, 7, dtype=torch.bool)}, ValueError, "mask: expected shape"),
        ((x,), {"mask": torch.ones(2, 8, 8)}, TypeError, "mask: expected a bool"),
        ((x,), {"block_size": 0}, ValueError, "block_size"),
        ((x,), {"block_size": 2.0}, TypeError, "block_size"),
        ((x,), {"block_lengths": [3, 4]}, ValueError, "block_lengths"),
        ((x,), {"block_lengths": [0, 8]}, ValueError, "block_lengths"),
        ((x,), {"cu_seqlens": torch.tensor([0, 5, 3, 8])}, ValueError, "cu_seqlens: expected non-decreasing"),
        ((x,), {"cu_seqlens": torch.tensor([0, 5, 7])}, ValueError, "cu_seqlens: expected to start at 0 and end at N=8"),
        ((x,), {"cu_seqlens": torch.tensor([0.0, 8.0])}, TypeError, "cu_seqlens"),
        ((x,), {"causal": True, "block_size": 2}, ValueError, "causal"),
        ((x,), {"block_size": 2, "mask": torch.ones(8, 8, dtype=torch.bool)}, ValueError, "at most one"),
        ((x, torch.randn(2, 5, 16)), {"causal": True}, ValueError, "causal: needs as many queries"),
        ((x,), {"causal": 1}, TypeError, "causal"),
    ]
    for args, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            module(*args, **kwargs)


def test_state_errors(mixer):
    x = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="state: batch size 3"):
        mixer.step(x, mixer.init_state(3))
    other = PolynomialMixer(16, degree=3)
    with pytest.raises(ValueError, match="state: width"):
        mixer.step(x, other.init_state(2))
    with pytest.raises(TypeError, match="state: expected a MixerState"):
        mixer.step(x, {"total": 0})
    with pytest.raises(ValueError, match="state: a streaming state cannot be combined with the dense"):
        mixer(x, mask=torch.ones(2, 4, 4, dtype=torch.bool), state=mixer.init_state(2))
    with pytest.raises(ValueError, match="packed"):
        mixer(x, cu_seqlens=torch.tensor([0, 4]), state=mixer.init_state(2))
    with pytest.raises(ValueError, match="batch_size"):
        mixer.init_state(0)
    with pytest.raises(ValueError, match="x: expected shape"):
        mixer.step(torch.randn(4, 16), mixer.init_state(2))

"""SDPA attention with the mixer's interface, and the nn.MultiheadAttention adapter."""

import math

import pytest
import torch

from polymixer import MultiHeadAttention, PolynomialMixer, PolynomialMultiheadAttention
from polymixer.ops import dense_context_mask, resolve_context


def _manual_attention(attn, x, ctx, allowed):
    """Softmax attention written out, with empty rows giving zeros before out_proj."""
    B, M, _ = x.shape
    N = ctx.shape[1]
    q = attn.q_proj(x).view(B, M, attn.heads, -1).transpose(1, 2)
    k, v = attn.kv_proj(ctx).view(B, N, 2, attn.heads, -1).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = (weights @ v).transpose(1, 2).reshape(B, M, -1)
    return attn.out_proj(out)


def test_attention_modes_match_manual_softmax():
    attn = MultiHeadAttention(60, heads=6).double()
    x = torch.randn(2, 33, 60, dtype=torch.float64)
    pad = torch.rand(2, 33) > 0.3
    pad[1] = False
    for kwargs in ({}, {"causal": True}, {"context_mask": pad}, {"block_size": 4}, {"block_lengths": [3, 30]},
                   {"cu_seqlens": torch.tensor([0, 10, 33]), "causal": True}, {"mask": torch.rand(2, 33, 33) > 0.5}):
        mode = resolve_context(2, 33, 33, **kwargs)
        allowed = dense_context_mask(mode, 2, 33, 33)
        torch.testing.assert_close(attn(x, **kwargs), _manual_attention(attn, x, x, allowed), msg=str(kwargs))


def test_attention_cross_and_gradients_finite_with_empty_rows():
    attn = MultiHeadAttention(16, heads=2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    c = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    out = attn(x, c, context_mask=pad)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(out, attn.out_proj.bias.expand(2, 5, 16))


def test_attention_and_mixer_are_interchangeable():
    x = torch.randn(2, 10, 32)
    for module in (MultiHeadAttention(32, heads=4), PolynomialMixer(32)):
        assert module(x, block_size=5).shape == x.shape


def test_adapter_matches_mixer_in_seq_first_and_batch_first():
    torch.manual_seed(0)
    mha = PolynomialMultiheadAttention(32, num_heads=4, batch_first=False).double()
    x = torch.randn(9, 2, 32, dtype=torch.float64)  # (L, B, E)
    out, weights = mha(x, x, x)
    assert weights is None
    torch.testing.assert_close(out, mha.mixer(x.transpose(0, 1)).transpose(0, 1))
    mha.batch_first = True
    xb = x.transpose(0, 1).contiguous()
    torch.testing.assert_close(mha(xb, xb, xb)[0], mha.mixer(xb))


def test_adapter_masks_follow_pytorch_conventions():
    mha = PolynomialMultiheadAttention(16, num_heads=2, batch_first=True).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    c = torch.randn(2, 8, 16, dtype=torch.float64)
    kpm = torch.zeros(2, 8, dtype=torch.bool)
    kpm[:, 5:] = True  # True = ignore, as in nn.MultiheadAttention
    out, _ = mha(x, c, c, key_padding_mask=kpm)
    torch.testing.assert_close(out, mha.mixer(x, c, context_mask=~kpm))
    causal_bool = torch.ones(6, 6, dtype=torch.bool).triu(1)
    torch.testing.assert_close(mha(x, x, x, attn_mask=causal_bool)[0], mha.mixer(x, causal=True))
    causal_float = torch.zeros(6, 6, dtype=torch.float64).masked_fill(causal_bool, float("-inf"))
    torch.testing.assert_close(mha(x, x, x, attn_mask=causal_float)[0], mha.mixer(x, causal=True))
    torch.testing.assert_close(mha(x, x, x, is_causal=True)[0], mha.mixer(x, causal=True))
    general = torch.rand(6, 8) > 0.5
    torch.testing.assert_close(mha(x, c, c, attn_mask=general)[0], mha.mixer(x, c, mask=(~general).expand(2, 6, 8)))
    unbatched, _ = mha(x[0], x[0], x[0])
    torch.testing.assert_close(unbatched, mha.mixer(x[:1])[0])


def test_adapter_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="dropout"):
        PolynomialMultiheadAttention(16, 2, dropout=0.1)
    with pytest.raises(ValueError, match="add_bias_kv"):
        PolynomialMultiheadAttention(16, 2, add_bias_kv=True)
    with pytest.raises(ValueError, match="kdim"):
        PolynomialMultiheadAttention(16, 2, kdim=8)
    mha = PolynomialMultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="need_weights"):
        mha(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="value"):
        mha(x, x, torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="0 and -inf"):
        mha(x, x, x, attn_mask=torch.randn(4, 4))
    per_head = torch.rand(2 * 2, 4, 4) > 0.5
    per_head[0] = ~per_head[1]
    with pytest.raises(ValueError, match="per-head"):
        mha(x, x, x, attn_mask=per_head)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mha(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))

"""PolynomialMultiheadAttention inside PyTorch's own transformer modules, and the swap helper.

Every composition is compared with a hand-written forward of the same layer whose token
mixing is the mixer's dense-mask oracle (``forward_reference``) with the equivalent
context mode; padded positions are left out of the comparison.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

from polymixer import PolynomialMultiheadAttention, replace_multihead_attention

D, HEADS, FF = 16, 2, 24
DT = torch.float64


# ----------------------------------------------------------------------------- helpers
def _padding(lengths: list[int], n: int) -> torch.Tensor:
    """PyTorch key-padding mask (B, n): True at padded positions (right padding)."""
    return torch.arange(n).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


def _bf(t: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return t if batch_first else t.transpose(0, 1)


def _mix(attn: PolynomialMultiheadAttention, x, context=None, pad=None, causal=False):
    """The reference token mixing: the oracle with the equivalent context mode (batch first)."""
    allowed = None if pad is None else ~pad
    return attn.mixer.forward_reference(x, context, context_mask=allowed, causal=causal)


def _ref_encoder_layer(layer: nn.TransformerEncoderLayer, x, pad=None, causal=False):
    """TransformerEncoderLayer.forward written out (dropout 0), x: (B, N, D)."""
    sa = lambda h: _mix(layer.self_attn, h, pad=pad, causal=causal)  # noqa: E731
    ff = lambda h: layer.linear2(layer.activation(layer.linear1(h)))  # noqa: E731
    if layer.norm_first:
        x = x + sa(layer.norm1(x))
        return x + ff(layer.norm2(x))
    x = layer.norm1(x + sa(x))
    return layer.norm2(x + ff(x))


def _ref_decoder_layer(layer: nn.TransformerDecoderLayer, x, memory, tgt_pad=None, mem_pad=None, causal=True):
    """TransformerDecoderLayer.forward written out (dropout 0), x: (B, T, D), memory: (B, S, D)."""
    sa = lambda h: _mix(layer.self_attn, h, pad=tgt_pad, causal=causal)  # noqa: E731
    ca = lambda h: _mix(layer.multihead_attn, h, memory, pad=mem_pad)  # noqa: E731
    ff = lambda h: layer.linear2(layer.activation(layer.linear1(h)))  # noqa: E731
    if layer.norm_first:
        x = x + sa(layer.norm1(x))
        x = x + ca(layer.norm2(x))
        return x + ff(layer.norm3(x))
    x = layer.norm1(x + sa(x))
    x = layer.norm2(x + ca(x))
    return layer.norm3(x + ff(x))


def _close_on_tokens(out, ref, pad=None):
    """Compare (B, N, D) outputs on the non-padded tokens only."""
    if pad is None:
        torch.testing.assert_close(out, ref)
    else:
        torch.testing.assert_close(out[~pad], ref[~pad])


def _run_modes(model, inputs: dict, reference, batch_first: bool, pad=None):
    """Train (with backward) and eval under no_grad, with grad and in inference_mode."""
    with torch.no_grad():
        model.eval()
        expected = reference()
    model.train()
    out = model(**inputs)
    _close_on_tokens(_bf(out, batch_first), expected, pad)
    upstream = torch.randn_like(out)
    if pad is not None:  # padded rows of the output are not meaningful
        upstream = upstream * _bf((~pad).unsqueeze(-1).to(out.dtype), batch_first)
    (out * upstream).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        _close_on_tokens(_bf(model(**inputs), batch_first), expected, pad)
    _close_on_tokens(_bf(model(**inputs), batch_first), expected, pad)  # eval, grad enabled
    with torch.inference_mode():
        out = model(**inputs)
    assert not out.is_nested and _bf(out, batch_first).shape == expected.shape
    _close_on_tokens(_bf(out, batch_first), expected, pad)


def _spy(attn: PolynomialMultiheadAttention) -> list[dict]:
    """Record the keyword arguments every call hands to the mixer."""
    calls: list[dict] = []
    attn.mixer.register_forward_pre_hook(lambda m, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


# ----------------------------------------------------------------------------- encoder layer
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", ["padding", "causal+padding"])
def test_encoder_layer_matches_reference(batch_first, norm_first, masks):
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=batch_first,
                                       norm_first=norm_first, dtype=DT)
    replace_multihead_attention(layer)
    assert isinstance(layer.self_attn, PolynomialMultiheadAttention)
    B, N = 3, 7
    x = torch.randn(B, N, D, dtype=DT)
    pad = _padding([7, 4, 1], N)
    inputs = dict(src=_bf(x, batch_first), src_key_padding_mask=pad)
    causal = masks == "causal+padding"
    if causal:  # float masks, as torch's modules make them
        inputs["src_mask"] = nn.Transformer.generate_square_subsequent_mask(N, dtype=DT)
        inputs["src_key_padding_mask"] = torch.zeros(B, N, dtype=DT).masked_fill(pad, float("-inf"))
        inputs["is_causal"] = True
    _run_modes(layer, inputs, lambda: _ref_encoder_layer(layer, x, pad, causal), batch_first, pad)


def test_encoder_layer_unbatched_and_default_dropout():
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, batch_first=True, dtype=DT)  # dropout 0.1
    replace_multihead_attention(layer)
    x = torch.randn(5, D, dtype=DT)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _ref_encoder_layer(layer, x[None])[0])
    layer.train()
    y = layer(x.requires_grad_())
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_causal_mask_gives_causal_outputs_in_the_linear_mode():
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, dtype=DT).eval()
    replace_multihead_attention(layer)
    calls = _spy(layer.self_attn)
    N = 8
    x = torch.randn(2, N, D, dtype=DT)
    mask = nn.Transformer.generate_square_subsequent_mask(N, dtype=DT)
    with torch.no_grad():
        y = layer(x, src_mask=mask)  # no hint: the mask is recognised as causal
        x2 = x.clone()
        x2[:, 5] += 3.0
        y2 = layer(x2, src_mask=mask, is_causal=True)
    torch.testing.assert_close(y2[:, :5], y[:, :5])
    assert (y2[:, 5:] - y[:, 5:]).abs().amax() > 1e-3
    assert all(c.get("causal") is True and c.get("mask") is None for c in calls), calls
    # without a mask every output sees the change
    with torch.no_grad():
        assert (layer(x2)[:, :5] - layer(x)[:, :5]).abs().amax() > 1e-3


# ----------------------------------------------------------------------------- encoder stack
@pytest.mark.parametrize("enable_nested_tensor", [True, False])
@pytest.mark.parametrize("swap_after_build", [True, False])
def test_encoder_stack_with_padding(enable_nested_tensor, swap_after_build):
    """TransformerEncoder declines its nested-tensor fast path for the drop-in, however built."""
    torch.manual_seed(1)
    N = 6
    pad = _padding([6, 3, 2], N)  # left-aligned padding: what the nested path converts
    x = torch.randn(3, N, D, dtype=DT)
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, dtype=DT)
    if swap_after_build:
        encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=enable_nested_tensor)
        # torch saw nn.MultiheadAttention: its nested-tensor path stays enabled after the swap
        assert encoder.use_nested_tensor == enable_nested_tensor
        replace_multihead_attention(encoder)
    else:
        layer.self_attn = PolynomialMultiheadAttention(D, HEADS, batch_first=True, dtype=DT)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=enable_nested_tensor)
        assert not encoder.use_nested_tensor
        if enable_nested_tensor:  # torch says why, naming the attribute it checked
            assert any("_qkv_same_embed_dim" in str(w.message) for w in caught)
    layers = list(encoder.layers)
    assert all(isinstance(m.self_attn, PolynomialMultiheadAttention) for m in layers)
    assert layers[0].self_attn is not layers[1].self_attn

    def reference():
        h = x
        for m in layers:
            h = _ref_encoder_layer(m, h, pad)
        return h

    _run_modes(encoder, dict(src=x, src_key_padding_mask=pad), reference, True, pad)


def test_encoder_stack_seq_first_with_float_masks():
    N = 5
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, dtype=DT)
    encoder = replace_multihead_attention(nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D, dtype=DT),
                                                                enable_nested_tensor=False))
    x = torch.randn(2, N, D, dtype=DT)
    pad = _padding([5, 3], N)
    float_pad = torch.zeros(2, N, dtype=DT).masked_fill(pad, float("-inf"))
    mask = nn.Transformer.generate_square_subsequent_mask(N, dtype=DT)

    def reference():
        h = x
        for m in encoder.layers:
            h = _ref_encoder_layer(m, h, pad, causal=True)
        return encoder.norm(h)

    _run_modes(encoder, dict(src=x.transpose(0, 1), mask=mask, src_key_padding_mask=float_pad), reference, False, pad)


# ----------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_reference(batch_first, norm_first):
    layer = nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=batch_first,
                                       norm_first=norm_first, dtype=DT)
    replace_multihead_attention(layer)
    T, S = 6, 9
    tgt, memory = torch.randn(3, T, D, dtype=DT), torch.randn(3, S, D, dtype=DT)
    tgt_pad, mem_pad = _padding([6, 2, 4], T), _padding([9, 9, 5], S)
    inputs = dict(
        tgt=_bf(tgt, batch_first), memory=_bf(memory, batch_first),
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(T, dtype=DT), tgt_is_causal=True,
        tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=mem_pad,
    )
    _run_modes(layer, inputs, lambda: _ref_decoder_layer(layer, tgt, memory, tgt_pad, mem_pad), batch_first, tgt_pad)


def test_decoder_stack_detects_the_causal_mask():
    T, S = 7, 4
    layer = nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, dtype=DT)
    decoder = replace_multihead_attention(nn.TransformerDecoder(layer, 2))
    calls = _spy(decoder.layers[0].self_attn)
    tgt, memory = torch.randn(2, T, D, dtype=DT), torch.randn(2, S, D, dtype=DT)
    bool_mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # True = not allowed

    def reference():
        h = tgt
        for m in decoder.layers:
            h = _ref_decoder_layer(m, h, memory)
        return h

    _run_modes(decoder, dict(tgt=tgt, memory=memory, tgt_mask=bool_mask), reference, True)
    assert calls and all(c.get("causal") is True and c.get("mask") is None for c in calls)


# ----------------------------------------------------------------------------- nn.Transformer
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # torch's note for batch_first=False
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_with_causal_target_and_padding(batch_first):
    torch.manual_seed(2)
    model = nn.Transformer(D, HEADS, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=FF,
                           dropout=0.0, batch_first=batch_first, dtype=DT)
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    assert replace_multihead_attention(model) is model
    swapped = [n for n, m in model.named_modules() if isinstance(m, PolynomialMultiheadAttention)]
    assert swapped == ["encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.multihead_attn"]
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    for name, p in model.named_parameters():  # everything else: the same tensors, unchanged
        if ".mixer." not in name:
            assert before[name][0] is p and torch.equal(before[name][1], p)
    assert all(".self_attn." in n or ".multihead_attn." in n for n in set(before) - set(dict(model.named_parameters())))

    S, T = 6, 5
    src, tgt = torch.randn(3, S, D, dtype=DT), torch.randn(3, T, D, dtype=DT)
    src_pad, tgt_pad = _padding([6, 4, 2], S), _padding([5, 5, 3], T)
    inputs = dict(
        src=_bf(src, batch_first), tgt=_bf(tgt, batch_first),
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(T, dtype=DT), tgt_is_causal=True,
        src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad,
    )

    def reference():
        memory = model.encoder.norm(_ref_encoder_layer(model.encoder.layers[0], src, src_pad))
        out = _ref_decoder_layer(model.decoder.layers[0], tgt, memory, tgt_pad, src_pad)
        return model.decoder.norm(out)

    _run_modes(model, inputs, reference, batch_first, tgt_pad)

    # causal target: changing a later target token leaves the earlier outputs alone
    tgt2 = tgt.clone()
    tgt2[:, 3] -= 2.0
    with torch.inference_mode():
        y = _bf(model(**inputs), batch_first)
        y2 = _bf(model(**{**inputs, "tgt": _bf(tgt2, batch_first)}), batch_first)
    torch.testing.assert_close(y2[:, :3], y[:, :3])
    assert (y2[:, 3:] - y[:, 3:]).abs().amax() > 1e-3


# ----------------------------------------------------------------------------- the adapter's masks
def test_adapter_float_masks_and_hints():
    attn = PolynomialMultiheadAttention(D, HEADS, batch_first=True, dtype=DT)
    calls = _spy(attn)
    x = torch.randn(2, 6, D, dtype=DT)
    blocked = torch.rand(6, 6) > 0.6
    blocked.fill_diagonal_(False)
    as_float = torch.zeros(6, 6, dtype=DT).masked_fill(blocked, float("-inf"))
    out, weights = attn(x, x, x, attn_mask=as_float, need_weights=False)
    assert weights is None
    torch.testing.assert_close(out, attn.mixer.forward_reference(x, mask=~blocked))
    assert calls[-1]["mask"] is not None and not calls[-1].get("causal")
    # is_causal=True is PyTorch's hint that attn_mask is causal: the O(N) mode, mask unread
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=DT)
    out, _ = attn(x, x, x, attn_mask=causal, is_causal=True)
    assert calls[-1].get("causal") is True and calls[-1].get("mask") is None
    torch.testing.assert_close(out, attn.mixer.forward_reference(x, causal=True))
    # a batched (B, L, S) causal mask is recognised too
    attn(x, x, x, attn_mask=causal.expand(2, 6, 6))
    assert calls[-1].get("causal") is True and calls[-1].get("mask") is None
    for bad in (0.5, float("inf"), float("nan"), -1e9):
        with pytest.raises(ValueError, match="attn_mask.*0 and -inf"):
            attn(x, x, x, attn_mask=torch.zeros(6, 6, dtype=DT).fill_diagonal_(bad))
    with pytest.raises(ValueError, match="key_padding_mask.*0 and -inf"):
        attn(x, x, x, key_padding_mask=torch.full((2, 6), -1.0))
    with pytest.raises(TypeError, match="key_padding_mask"):
        attn(x, x, x, key_padding_mask=torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="is_causal"):
        attn(x, x[:, :4], x[:, :4], is_causal=True)
    with pytest.raises(ValueError, match="attn_mask"):
        attn(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.bool))


def test_adapter_declines_pytorch_fused_paths_without_fake_weights():
    attn = PolynomialMultiheadAttention(D, HEADS, batch_first=True)
    assert attn._qkv_same_embed_dim is False
    assert torch.overrides.has_torch_function((torch.zeros(1), attn.in_proj_weight, attn.in_proj_bias))
    with pytest.raises(TypeError, match="no packed"):
        torch.matmul(torch.zeros(2, D), attn.in_proj_weight)
    assert attn.out_proj is attn.mixer.out_proj
    assert "in_proj" not in "".join(attn.state_dict())
    nested = torch.nested.nested_tensor([torch.randn(3, D), torch.randn(2, D)], layout=torch.jagged)
    with pytest.raises(TypeError, match="query: nested"):
        attn(nested, nested, nested)


# ----------------------------------------------------------------------------- the swap helper
def test_replace_keeps_settings_and_shares_shared_modules(caplog):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, D, dtype=DT)
            self.attn = nn.MultiheadAttention(D, 4, dropout=0.2, bias=False, batch_first=True, dtype=DT)
            self.blocks = nn.ModuleList([nn.MultiheadAttention(D, 2, dtype=DT)])
            self.alias = self.attn  # the same module under a second name

    model = Model().eval()
    embed_weight = model.embed.weight
    with caplog.at_level(logging.INFO, logger="polymixer.nn.adapter"):
        assert replace_multihead_attention(model, degree=3, expand=1) is model
    assert "attn" in caplog.text and "blocks.0" in caplog.text and "alias" in caplog.text
    assert model.embed.weight is embed_weight
    assert model.alias is model.attn
    a, b = model.attn, model.blocks[0]
    assert (a.embed_dim, a.num_heads, a.batch_first, b.num_heads, b.batch_first) == (D, 4, True, 2, False)
    assert not a.training and not b.training
    assert a.mixer.degree == 3 and a.mixer.expand == 1 and a.mixer.out_proj.bias is None
    assert b.mixer.out_proj.bias is not None
    assert all(p.dtype == DT for p in model.parameters())
    root = replace_multihead_attention(nn.MultiheadAttention(D, 2), variant="power")
    assert isinstance(root, PolynomialMultiheadAttention) and root.mixer.variant == "power"


def test_replace_rejects_what_it_cannot_replace_and_changes_nothing():
    for bad, what in (
        (dict(kdim=8, vdim=8), "kdim"),
        (dict(add_bias_kv=True), "add_bias_kv"),
        (dict(add_zero_attn=True), "add_zero_attn"),
    ):
        model = nn.Sequential(nn.Linear(D, D))
        model.add_module("good", nn.MultiheadAttention(D, 2))
        model.add_module("bad", nn.MultiheadAttention(D, 2, **bad))
        with pytest.raises(ValueError, match=f"bad: .*{what}"):
            replace_multihead_attention(model)
        assert isinstance(model.good, nn.MultiheadAttention)  # checked before anything changed
    with pytest.raises(TypeError, match="model"):
        replace_multihead_attention("not a model")
    with pytest.raises(TypeError, match="degree"):
        replace_multihead_attention(nn.MultiheadAttention(D, 2), degree=2.0)

"""DiT: shapes for both mixers, adaLN-Zero start, presets and parameter counts, any size and
channel count, save/load round trip, bad input."""

import json

import pytest
import torch

from polymixer import MultiHeadAttention, PolynomialMixer
from polymixer.io import CheckpointError
from polymixer.models import PRESETS, DiT, DiTConfig, dit_config
from polymixer.models.io import load_state_checked, widen_gates

from helpers import random_weights


def tiny(mixer="pom", **kw):
    base = dict(image_size=8, in_channels=1, patch_size=2, width=32, depth=2, heads=2, mlp_ratio=2.0,
                mixer=mixer, n_classes=10)
    base.update(kw)
    return DiT(DiTConfig(**base))


def inputs(B=3, C=1, H=8, W=8, n_classes=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g), torch.rand(B, generator=g), torch.randint(0, n_classes + 1, (B,), generator=g)


def perturb(model):
    """Random weights everywhere (the zero-initialised adaLN would hide most bugs)."""
    return random_weights(model, eval=False)


@pytest.mark.parametrize("mixer", ["pom", "attention"])
def test_forward_shape_and_mixer_choice(mixer):
    model = perturb(tiny(mixer))
    kind = PolynomialMixer if mixer == "pom" else MultiHeadAttention
    assert all(isinstance(b.mixer, kind) for b in model.blocks)
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pom_and_attention_blocks_differ_only_in_the_mixer():
    a, b = tiny("pom"), tiny("attention")
    names = lambda m: {n for n, _ in m.named_parameters() if ".mixer." not in n}  # noqa: E731
    assert names(a) == names(b)
    for (n1, p1), (n2, p2) in zip(
        [(n, p) for n, p in a.named_parameters() if ".mixer." not in n],
        [(n, p) for n, p in b.named_parameters() if ".mixer." not in n],
    ):
        assert n1 == n2 and p1.shape == p2.shape


def test_adaln_zero_initialisation_outputs_zero():
    model = tiny()
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), torch.zeros_like(x))
    for block in model.blocks:
        assert torch.count_nonzero(block.modulation[-1].weight) == 0


def test_conditioning_changes_output():
    model = perturb(tiny())
    x, t, _ = inputs()
    y0, y1 = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    assert not torch.allclose(model(x, t, y0), model(x, t, y1))
    assert not torch.allclose(model(x, t, y0), model(x, 1 - t, y0))


@pytest.mark.parametrize("mixer", ["pom", "attention"])
def test_other_image_sizes_and_channels(mixer):
    model = perturb(tiny(mixer, in_channels=4, patch_size=2, image_size=8))
    x, t, y = inputs(C=4, H=6, W=12)  # non-square, not the training size
    assert model(x, t, y).shape == (3, 4, 6, 12)
    # batch independence: one image alone gives the same output as in the batch
    assert torch.allclose(model(x[:1], t[:1], y[:1]), model(x, t, y)[:1], atol=1e-5)


def test_unpatchify_is_the_inverse_of_patchify_order():
    """With identity-like weights the output patch of token (i, j) lands on pixels of patch (i, j)."""
    model = tiny(depth=1)
    p = model.config.patch_size
    x, t, y = inputs()
    with torch.no_grad():
        model.final.linear.bias.copy_(torch.arange(p * p, dtype=torch.float32))  # value = offset in the patch
    out = model(x, t, y)
    expected = torch.arange(p * p, dtype=torch.float32).view(p, p).repeat(4, 4)
    assert torch.equal(out[0, 0], expected)


def test_presets_parameter_counts_within_15_percent():
    seen = set()
    for name in PRESETS:
        size = name.split("/")[0]
        if size in seen:
            continue
        seen.add(size)
        with torch.device("meta"):
            n_pom = DiT(dit_config(name, "pom")).num_parameters()
            n_att = DiT(dit_config(name, "attention")).num_parameters()
        print(f"{name}: PoM {n_pom / 1e6:.1f}M, attention {n_att / 1e6:.1f}M ({n_pom / n_att - 1:+.1%})")
        assert abs(n_pom / n_att - 1) <= 0.15, name
    xl = dit_config("DiT-XL/2", "pom")
    assert (xl.depth, xl.width, xl.mlp_ratio, xl.pom_degree, xl.pom_expand) == (28, 1152, 2.0, 2, 2)
    s = dit_config("DiT-S/4", "pom")
    assert (s.depth, s.width, s.heads, s.patch_size, s.mlp_ratio) == (12, 384, 6, 4, 3.0)
    assert dit_config("DiT-B/8", "attention").mlp_ratio == 4.0
    with torch.device("meta"):
        n = DiT(dit_config("DiT-XL/2", "attention", image_size=32, in_channels=4, n_classes=1000)).num_parameters()
    assert 670e6 < n < 680e6  # DiT-XL/2 has 675M parameters


def test_save_load_round_trip(tmp_path):
    model = perturb(tiny("pom", pom_variant="power", pom_heads=4))
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = DiT.from_pretrained(folder)
    assert loaded.config == model.config
    x, t, y = inputs()
    assert torch.equal(loaded(x, t, y), model(x, t, y))
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("variant,heads,wider", [("product", 2, 1), ("product", 2, 8), ("power", 2, 1),
                                                  ("power", 4, 16)])
def test_widen_gates_keeps_the_function(variant, heads, wider):
    narrow = perturb(tiny("pom", pom_variant=variant, pom_heads=heads))
    wide = tiny("pom", pom_variant=variant, pom_heads=wider)
    state, widened = widen_gates(wide, narrow.state_dict())
    assert sorted(widened) == sorted(f"blocks.{i}.mixer.gate_proj.{p}" for i in range(2) for p in ("weight", "bias"))
    load_state_checked(wide, state, "test")
    x, t, y = inputs()
    assert not torch.equal(narrow(x, t, y), tiny("pom", pom_variant=variant, pom_heads=wider)(x, t, y))
    torch.testing.assert_close(wide(x, t, y), narrow(x, t, y), rtol=1e-5, atol=1e-6)
    # narrowing, or a width the heads do not divide, is not a widening: left to load_state_checked
    state, widened = widen_gates(narrow, wide.state_dict())
    assert widened == []
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_checked(narrow, state, "test")


def test_load_errors_never_half_load(tmp_path):
    model = perturb(tiny())
    folder = model.save_pretrained(tmp_path / "m")
    # another architecture: same file names, different width
    other = tiny(width=48).save_pretrained(tmp_path / "other")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "config.json").write_text((folder / "config.json").read_text().replace(
        json.loads((folder / "config.json").read_text())["weights_sha256"], "0" * 0))
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("weights_sha256")
    (tmp_path / "mixed" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "mixed" / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="another architecture"):
        DiT.from_pretrained(tmp_path / "mixed")
    # truncated weights
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum|truncated|corrupt"):
        DiT.from_pretrained(folder)
    # not a DiT config
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"architecture": "UNet2D"}))
    with pytest.raises(CheckpointError, match="architecture"):
        DiT.from_pretrained(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="not a folder"):
        DiT.from_pretrained(tmp_path / "missing")


def test_bad_inputs():
    model = tiny()
    x, t, y = inputs()
    with pytest.raises(ValueError, match="unknown class index 11"):
        model(x, t, torch.tensor([0, 11, 2]))
    with pytest.raises(ValueError, match="unknown class index -1"):
        model(x, t, torch.tensor([0, -1, 2]))
    with pytest.raises(TypeError, match="y"):
        model(x, t, y.float())
    with pytest.raises(ValueError, match="not divisible by the model's patch size 2"):
        model(torch.randn(3, 1, 7, 8), t, y)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(3, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match="t:"):
        model(x, t[:2], y)
    with pytest.raises(ValueError, match="image_size"):
        DiTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="mixer"):
        DiTConfig(mixer="mamba")
    with pytest.raises(ValueError, match="unknown preset"):
        dit_config("DiT-XXL/2")
    with pytest.raises(TypeError, match="depth"):
        DiTConfig(depth=2.5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = perturb(tiny())
    x, t, y = inputs()
    model(x, t, y).square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, t, y).square().sum().backward()
    for a, p in zip(ref, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)

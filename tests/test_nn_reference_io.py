"""from_reference: state dicts in the authors' layouts give the same outputs as that code.

The oracle here re-implements the reference forward directly from the raw tensors of the
state dict (docs/design.md, sections 1 and 6), independently of PolynomialMixer's modules.
"""

import pytest
import torch
import torch.nn.functional as F

from polymixer import PolynomialMixer, to_reference


def _reference_product(sd, x, degree, key="ho_proj"):
    h = F.linear(x, sd[f"{key}.weight"], sd[f"{key}.bias"])
    g = F.gelu(h, approximate="none")
    chunks = g.chunk(degree, dim=-1)
    feats, p = [], None
    for c in chunks:
        p = c if p is None else p * c
        feats.append(p)
    h = torch.cat(feats, -1).mean(dim=1, keepdim=True)
    s = torch.sigmoid(F.linear(x, sd["se_proj.weight"], sd["se_proj.bias"]))
    return F.linear(s * h, sd["ag_proj.weight"], sd["ag_proj.bias"])


def _reference_power(sd, x, degree, expand, heads, grouped=False):
    D = x.shape[-1]
    E = expand * D
    if grouped:
        groups = D // sd["po_proj.weight"].shape[1]
        u = F.conv1d(x.transpose(1, 2), sd["po_proj.weight"], groups=groups).transpose(1, 2)
        z = F.linear(x, sd["se_proj.weight"], sd["se_proj.bias"])
    else:
        qc = F.linear(x, sd["qc_proj.weight"])
        u, z = qc[..., :E], qc[..., E:] + sd["se_bias"]
    u = torch.clamp(F.leaky_relu(u, 0.01), -0.1, 6)
    h = sum(sd["po_coeff"][:, i] * u ** (i + 1) for i in range(degree))
    h = h.mean(dim=1, keepdim=True)
    s = F.hardsigmoid(z)
    if heads > 1:
        s = s.repeat_interleave(E // heads, dim=-1)
    return F.linear(s * h, sd["ag_proj.weight"], sd.get("ag_proj.bias"))


@pytest.mark.parametrize("key", ["ho_proj", "po_proj"])
@pytest.mark.parametrize("degree,expand", [(2, 2), (3, 1)])
def test_product_layout_loads_and_matches(key, degree, expand):
    D, F_ = 24, degree * expand * 24
    sd = {
        f"{key}.weight": torch.randn(F_, D, dtype=torch.float64) / 5, f"{key}.bias": torch.randn(F_, dtype=torch.float64),
        "se_proj.weight": torch.randn(F_, D, dtype=torch.float64) / 5, "se_proj.bias": torch.randn(F_, dtype=torch.float64),
        "ag_proj.weight": torch.randn(D, F_, dtype=torch.float64) / 5, "ag_proj.bias": torch.randn(D, dtype=torch.float64),
    }
    mixer = PolynomialMixer.from_reference(sd, variant="product", degree=degree, expand=expand)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _reference_product(sd, x, degree, key))
    again = PolynomialMixer.from_reference(to_reference(mixer, name=key), variant="product", degree=degree, expand=expand)
    torch.testing.assert_close(again(x), mixer(x))


@pytest.mark.parametrize("heads,bias", [(1, False), (4, True)])
def test_power_layout_loads_and_matches(heads, bias):
    D, E, k = 24, 48, 3
    G = E if heads == 1 else heads
    sd = {
        "qc_proj.weight": torch.randn(E + G, D, dtype=torch.float64) / 3,
        "se_bias": torch.randn(G, dtype=torch.float64),
        "po_coeff": torch.randn(E, k, dtype=torch.float64),
        "ag_proj.weight": torch.randn(D, E, dtype=torch.float64) / 5,
    }
    if bias:
        sd["ag_proj.bias"] = torch.randn(D, dtype=torch.float64)
    prefixed = {f"blocks.3.mixer.{k_}": v for k_, v in sd.items()}
    mixer = PolynomialMixer.from_reference(prefixed, variant="power", degree=k, expand=2, heads=heads)
    x = torch.randn(2, 9, D, dtype=torch.float64) * 3
    torch.testing.assert_close(mixer(x), _reference_power(sd, x, k, 2, heads))
    again = PolynomialMixer.from_reference(to_reference(mixer), variant="power", degree=k, expand=2, heads=heads)
    torch.testing.assert_close(again(x), mixer(x))


def test_power_grouped_layout_loads_and_matches():
    D, E, k, groups = 24, 48, 2, 4
    sd = {
        "po_proj.weight": torch.randn(E, D // groups, 1, dtype=torch.float64) / 2,
        "se_proj.weight": torch.randn(E, D, dtype=torch.float64) / 3,
        "se_proj.bias": torch.randn(E, dtype=torch.float64),
        "po_coeff": torch.randn(E, k, dtype=torch.float64),
        "ag_proj.weight": torch.randn(D, E, dtype=torch.float64) / 5,
    }
    mixer = PolynomialMixer.from_reference(sd, variant="power", degree=k, expand=2)
    x = torch.randn(3, 7, D, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _reference_power(sd, x, k, 2, 1, grouped=True))


def test_from_reference_errors_name_the_problem():
    with pytest.raises(ValueError, match="ho_proj.weight"):
        PolynomialMixer.from_reference({"foo": torch.zeros(1)})
    sd = {"ho_proj.weight": torch.zeros(96, 24)}
    with pytest.raises(ValueError, match="degree"):
        PolynomialMixer.from_reference(sd, degree=3, expand=2)
    with pytest.raises(ValueError, match="ho_proj.bias"):
        PolynomialMixer.from_reference(sd, degree=2, expand=2)
    with pytest.raises(TypeError, match="state_dict"):
        PolynomialMixer.from_reference([1, 2])


@pytest.mark.parametrize("options", [dict(rotary_axes=1), dict(frame_memory="decay"), dict(frame_memory="window:2")])
def test_to_reference_refuses_options_the_layout_cannot_hold(options):
    from polymixer import PolynomialMixer, to_reference

    with pytest.raises(ValueError, match="reference layout has no place"):
        to_reference(PolynomialMixer(8, **options))
    assert to_reference(PolynomialMixer(8))  # the plain mixer still exports

"""Loading mixers stored in the layout of the authors' public reference code (docs/design.md, section 6)."""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["load_reference", "to_reference"]


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept keys with a common module prefix (``blocks.0.attn.qc_proj.weight``)."""
    leaves = ("ho_proj.", "po_proj.", "se_proj.", "ag_proj.", "qc_proj.", "se_bias", "po_coeff")
    out = {}
    for key, value in state_dict.items():
        for leaf in leaves:
            at = key.find(leaf)
            if at == 0 or (at > 0 and key[at - 1] == "."):
                out[key[at:]] = value
                break
    return out


def _take(sd: dict, key: str, shape: tuple) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"state_dict: missing key {key!r} (found {sorted(sd)})")
    t = sd[key]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"state_dict: {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def load_reference(cls, state_dict, variant="product", degree=2, expand=2, heads=1):
    """Build ``cls(dim, degree, expand, variant, heads)`` from a reference state dict."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping of tensors, got {type(state_dict).__name__}")
    sd = _strip_prefix(state_dict)
    if variant == "product":
        key = "ho_proj" if "ho_proj.weight" in sd else "po_proj"
        if f"{key}.weight" not in sd:
            raise ValueError(f"state_dict: expected 'ho_proj.weight' or 'po_proj.weight', found {sorted(state_dict)}")
        width, dim = sd[f"{key}.weight"].shape
        mixer = cls(dim, degree=degree, expand=expand, variant="product", heads=heads,
                    dtype=sd[f"{key}.weight"].dtype)
        F_, G = mixer.state_width, (mixer.state_width if heads == 1 else heads)
        if width != F_:
            raise ValueError(
                f"state_dict: {key}.weight has {width} rows, expected degree*expand*dim = {F_}; "
                "check degree and expand"
            )
        with torch.no_grad():
            mixer.feature_proj.weight.copy_(_take(sd, f"{key}.weight", (F_, dim)))
            mixer.feature_proj.bias.copy_(_take(sd, f"{key}.bias", (F_,)))
            mixer.gate_proj.weight.copy_(_take(sd, "se_proj.weight", (G, dim)))
            mixer.gate_proj.bias.copy_(_take(sd, "se_proj.bias", (G,)))
            mixer.out_proj.weight.copy_(_take(sd, "ag_proj.weight", (dim, F_)))
            mixer.out_proj.bias.copy_(_take(sd, "ag_proj.bias", (dim,)))
        return mixer
    if variant != "power":
        raise ValueError(f"variant: expected 'product' or 'power', got {variant!r}")
    if "ag_proj.weight" not in sd:
        raise ValueError(f"state_dict: missing key 'ag_proj.weight' (found {sorted(state_dict)})")
    dim, inner = sd["ag_proj.weight"].shape
    has_bias = "ag_proj.bias" in sd
    mixer = cls(dim, degree=degree, expand=expand, variant="power", heads=heads, bias=has_bias,
                dtype=sd["ag_proj.weight"].dtype)
    F_, G = mixer.state_width, (mixer.state_width if heads == 1 else heads)
    if inner != F_:
        raise ValueError(f"state_dict: ag_proj.weight has {inner} columns, expected expand*dim = {F_}; check expand")
    with torch.no_grad():
        if "qc_proj.weight" in sd:
            w = _take(sd, "qc_proj.weight", (F_ + G, dim))
            mixer.feature_proj.weight.copy_(w[:F_])
            mixer.gate_proj.weight.copy_(w[F_:])
            mixer.gate_proj.bias.copy_(_take(sd, "se_bias", (G,)))
        elif "po_proj.weight" in sd:
            w = sd["po_proj.weight"]
            if w.dim() != 3 or w.shape[0] != F_ or w.shape[2] != 1 or dim % w.shape[1] != 0:
                raise ValueError(
                    f"state_dict: po_proj.weight has shape {tuple(w.shape)}, expected a grouped 1x1 "
                    f"convolution ({F_}, {dim}/groups, 1)"
                )
            groups = dim // w.shape[1]
            if F_ % groups != 0:
                raise ValueError(f"state_dict: po_proj.weight implies {groups} groups, which does not divide {F_}")
            # Grouped 1x1 convolution = block-diagonal dense weight.
            dense = torch.zeros(F_, dim, dtype=w.dtype)
            out_per, in_per = F_ // groups, dim // groups
            for g in range(groups):
                dense[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] = w[g * out_per:(g + 1) * out_per, :, 0]
            mixer.feature_proj.weight.copy_(dense)
            mixer.gate_proj.weight.copy_(_take(sd, "se_proj.weight", (G, dim)))
            mixer.gate_proj.bias.copy_(_take(sd, "se_proj.bias", (G,)))
        else:
            raise ValueError(f"state_dict: expected 'qc_proj.weight' or 'po_proj.weight', found {sorted(state_dict)}")
        mixer.coeff.copy_(_take(sd, "po_coeff", (F_, degree)))
        mixer.out_proj.weight.copy_(sd["ag_proj.weight"])
        if has_bias:
            mixer.out_proj.bias.copy_(_take(sd, "ag_proj.bias", (dim,)))
    return mixer


def to_reference(mixer, name: str = "ho_proj") -> dict[str, torch.Tensor]:
    """The mixer's weights in the reference layout (product: ``name`` is ho_proj or po_proj).

    Raises ValueError for a mixer with options the reference layout has no place for (rotary
    positions, a frame memory other than the mean): its weights alone would give another function.
    """
    extras = []
    if getattr(mixer, "rotary_axes", 0):
        extras.append(f"rotary_axes={mixer.rotary_axes}")
    memory = getattr(mixer, "frame_memory", None)
    if memory is not None and getattr(memory, "kind", "mean") != "mean":
        extras.append(f"frame_memory={memory.kind!r}")
    if extras:
        raise ValueError(f"mixer: the reference layout has no place for {', '.join(extras)}; the exported weights "
                         "would compute another function")
    if mixer.variant == "product":
        return {
            f"{name}.weight": mixer.feature_proj.weight.detach().clone(),
            f"{name}.bias": mixer.feature_proj.bias.detach().clone(),
            "se_proj.weight": mixer.gate_proj.weight.detach().clone(),
            "se_proj.bias": mixer.gate_proj.bias.detach().clone(),
            "ag_proj.weight": mixer.out_proj.weight.detach().clone(),
            "ag_proj.bias": mixer.out_proj.bias.detach().clone(),
        }
    out = {
        "qc_proj.weight": torch.cat([mixer.feature_proj.weight, mixer.gate_proj.weight]).detach().clone(),
        "se_bias": mixer.gate_proj.bias.detach().clone(),
        "po_coeff": mixer.coeff.detach().clone(),
        "ag_proj.weight": mixer.out_proj.weight.detach().clone(),
    }
    if mixer.out_proj.bias is not None:
        out["ag_proj.bias"] = mixer.out_proj.bias.detach().clone()
    return out

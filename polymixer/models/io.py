"""Save and load any registered model as a folder: ``config.json`` + ``model.safetensors``.

The config names its ``architecture``; :func:`load_pretrained` builds the class registered
under it (``models/registry.py``), so an image DiT and a video DiT load through one function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..io import CheckpointError, load_tensors, read_json, save_tensors, sha256_file, write_json
from .registry import build_model, config_from_dict, config_to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

__all__ = ["save_pretrained", "load_pretrained", "load_state_checked", "widen_gates", "add_frame_memory", "add_mlp_convs", "add_context_inputs",
           "add_mixer_members"]


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` only if every key and shape matches (never half-loads)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise CheckpointError(f"{source}: weights of another architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def widen_gates(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with every PoM gate widened to ``model``'s gate width, exactly.

    A mixer with G gate heads multiplies each block of F/G consecutive state channels by one
    gate scalar; a mixer with G' = m*G heads (or a full-width gate, G' = F) whose gate rows
    repeat each of the G rows m times computes the same function. So weights of a model with
    fewer gate heads can start one with more (e.g. ``pom_heads=4`` -> ``pom_heads=1``, a
    full-width gate) and fine-tuning then uses the extra freedom. Returns the new state and
    the names of the widened tensors; every other tensor is passed through unchanged (a
    mismatch elsewhere is left to :func:`load_state_checked` to report).
    """
    from ..nn.mixer import PolynomialMixer

    expected = model.state_dict()
    gates = {f"{prefix}{'.' if prefix else ''}gate_proj.{p}" for prefix, module in model.named_modules()
             if isinstance(module, PolynomialMixer) for p in ("weight", "bias")}
    out, widened = dict(state), []
    for name, tensor in state.items():
        if name not in gates:
            continue
        rows, target = tensor.shape[0], expected[name].shape[0]
        if rows < target and target % rows == 0 and tuple(tensor.shape[1:]) == tuple(expected[name].shape[1:]):
            out[name] = tensor.repeat_interleave(target // rows, dim=0)
            widened.append(name)
    return out, widened


def _add_from_model(model: nn.Module, state: dict[str, torch.Tensor], kind: type,
                    leaves: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` plus the tensors ``<module>.<leaf>`` of ``model``'s modules of type ``kind``
    that it lacks, taken from ``model`` as it is; returns the new state and the names added."""
    out, added = dict(state), []
    own = model.state_dict()
    for prefix, module in model.named_modules():
        if not isinstance(module, kind):
            continue
        for leaf in leaves:
            name = f"{prefix}{'.' if prefix else ''}{leaf}"
            if name in own and name not in state:
                out[name] = own[name].detach().clone()
                added.append(name)
    return out, added


def add_mlp_convs(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with the MLP convolutions of ``model`` that it lacks (weights of a model
    without ``mlp_conv`` starting one with it) taken from ``model`` as it is, i.e. at their
    identity start: the function is the same at step 0. Returns the new state and the
    names added; every other tensor is passed through."""
    from .blocks import MLP

    return _add_from_model(model, state, MLP, ("conv.weight", "conv.bias"))


def add_context_inputs(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` of a video model without ``context_frames`` made to start ``model``, which
    has them: the patch embedding's weights for the stacked earlier frames start at zero, so
    the function is the same at step 0 (the frame's own channels come first). Returns the
    new state and the names widened; every other tensor is passed through."""
    K = getattr(getattr(model, "config", None), "context_frames", 0)
    name = "patch_embed.weight"
    if not K or name not in state:
        return state, []
    target = model.state_dict()[name]
    source = state[name]
    if (source.shape[1] * (1 + K) != target.shape[1] or source.shape[0] != target.shape[0]
            or tuple(source.shape[2:]) != tuple(target.shape[2:])):
        return state, []
    out = dict(state)
    out[name] = torch.cat([source, source.new_zeros(source.shape[0], source.shape[1] * K, *source.shape[2:])], dim=1)
    return out, [name]


def add_frame_memory(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with the frame-memory decay parameters of ``model``'s PoM mixers that it
    lacks (weights of a model with the plain mean starting one with ``"decay"`` or
    ``"gated-decay"``, docs/design.md, section 8) taken from ``model`` as it is, i.e. at
    their start (γ = 0.9, no gate): the function changes from the mean to that decay.
    Returns the new state and the names added; every other tensor is passed through."""
    from ..nn.mixer import PolynomialMixer

    return _add_from_model(model, state, PolynomialMixer, ("decay_logit", "decay_weight"))


def add_mixer_members(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` of a model with one token mixer per block, made to start ``model`` whose
    blocks sum that mixer and others (a hybrid such as ``"pom + local-attention"``, a
    :class:`~polymixer.models.mixers.MixerSum`) with the same function at step 0.

    In each hybrid block whose tensors ``state`` holds as one mixer's (``<block>.mixer.<name>``,
    none under ``<block>.mixer.mixers.``), those tensors become the first member's whose names
    include all of them (e.g. PoM's ``feature_proj``, ``gate_proj``, ``out_proj``). Every other
    member starts from ``model``'s own tensors with its output projection (``out_proj``) at
    zero, or, for a member without one (the depthwise ``conv``), all its tensors at zero: the
    sum then equals the source mixer, and training grows the new members from there.
    Returns the new state and the names of the new members' tensors; a block whose source
    mixer matches no member is passed through (:func:`load_state_checked` reports it).
    """
    from .mixers import MixerSum

    out, added = dict(state), []
    own = model.state_dict()
    for prefix, module in model.named_modules():
        if not isinstance(module, MixerSum):
            continue
        head = f"{prefix}."
        source = {k[len(head):]: k for k in state if k.startswith(head)}
        if not source or any(leaf.startswith("mixers.") for leaf in source):
            continue
        members = [{k[len(f"{head}mixers.{i}."):] for k in own if k.startswith(f"{head}mixers.{i}.")}
                   for i in range(len(module.mixers))]
        match = next((i for i, names in enumerate(members) if set(source) <= names), None)
        if match is None:
            continue
        for leaf, key in source.items():
            out[f"{head}mixers.{match}.{leaf}"] = out.pop(key)
        for i, names in enumerate(members):
            if i == match:
                continue
            zero_all = not any(n.startswith("out_proj.") for n in names)
            for leaf in sorted(names):
                name = f"{head}mixers.{i}.{leaf}"
                tensor = own[name].detach().clone()
                if zero_all or leaf.startswith("out_proj."):
                    tensor.zero_()
                out[name] = tensor
                added.append(name)
    return out, added


def save_pretrained(model: nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` atomically; returns folder.

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point weights in that type, half
    the size; loading casts them back to the model's float32 parameters.
    """
    if not hasattr(type(model), "architecture") or not hasattr(model, "config"):
        raise TypeError(f"model: expected a registered polymixer model, got {type(model).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    weights = save_tensors(folder / WEIGHTS_NAME, state, metadata={"format": "pt"})
    config = config_to_dict(model.config)
    config["weights_sha256"] = sha256_file(weights)
    write_json(folder / CONFIG_NAME, config)
    return folder


def load_pretrained(folder: str | Path, map_location: str | torch.device = "cpu",
                    expected: type[nn.Module] | None = None) -> nn.Module:
    """Build the model saved in ``folder`` (its class from the config's ``architecture``);
    ``expected`` restricts the class. Any problem raises CheckpointError before returning."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    data = read_json(folder / CONFIG_NAME)
    digest = data.pop("weights_sha256", None)
    want = getattr(expected, "architecture", None)
    try:
        config = config_from_dict(data, expected=want)
    except (TypeError, ValueError) as exc:
        what = f"a {expected.__name__} config" if expected is not None else "a polymixer model config"
        raise CheckpointError(f"{folder / CONFIG_NAME}: not {what}: {exc}") from exc
    weights = folder / WEIGHTS_NAME
    if digest is not None and weights.is_file() and sha256_file(weights) != digest:
        raise CheckpointError(f"{weights}: checksum mismatch (truncated or corrupt file)")
    state = load_tensors(weights, device=map_location)
    model = build_model(config)
    load_state_checked(model, state, str(weights))
    return model.to(map_location).eval()

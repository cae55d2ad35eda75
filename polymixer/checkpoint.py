"""Training checkpoints: a folder per step, written atomically, verified when read.

``<out>/checkpoints/step_00001000/`` holds ``model.safetensors``, ``ema.safetensors``,
``optimizer.safetensors`` (optimizer tensors and every process's RNG states) and
``state.json`` (step, configs, optimizer hyper-parameters, SHA-256 of each file). The
folder is written under a temporary name and renamed into place, so a killed run never
leaves a partial checkpoint under a real name; a truncated or corrupt one raises
:class:`~polymixer.io.CheckpointError` before anything is loaded.

The newest ``step_*`` folder is the one a plain ``--resume`` continues. Resuming from an
older step starts a new line of work: :func:`set_aside_later_checkpoints` moves the later
folders into ``abandoned_after_step_<N>/`` (kept, never listed again), and
:func:`prune_checkpoints` spares the checkpoint a session started from.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .io import CheckpointError, load_tensors, read_json, save_tensors, sha256_file, write_json

__all__ = ["save_checkpoint", "load_checkpoint", "verify_checkpoint", "list_checkpoints", "latest_checkpoint",
           "newest_intact_checkpoint", "prune_checkpoints", "set_aside_later_checkpoints", "flatten_optimizer",
           "unflatten_optimizer"]

STEP_RE = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``state/<idx>/<name>``) and JSON data."""
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{idx}/{name}"] = value
            else:
                scalars[f"{idx}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` under ``folder`` sorted by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | Path, keep_last: int, keep: str | Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (keep_last <= 0 keeps all).

    ``keep``: a checkpoint folder never deleted (the one the running session started from)."""
    if keep_last <= 0:
        return
    protected = Path(keep).resolve() if keep is not None else None
    for _, path in list_checkpoints(folder)[:-keep_last]:
        if protected is not None and path.resolve() == protected:
            continue
        shutil.rmtree(path, ignore_errors=True)


def set_aside_later_checkpoints(folder: str | Path, step: int) -> Path | None:
    """Move the checkpoints of ``folder`` later than ``step`` into a new subfolder
    ``folder/abandoned_after_step_<step>[_<n>]/`` (kept, never deleted), so that a run
    resumed from ``step`` starts a new line of work whose newest checkpoint is its own.
    Returns the subfolder, or None when there was nothing later."""
    folder = Path(folder)
    later = [path for s, path in list_checkpoints(folder) if s > step]
    if not later:
        return None
    base = folder / f"abandoned_after_step_{step:08d}"
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}_{n}")
    target.mkdir()
    for path in later:
        os.replace(path, target / path.name)
    return target


def verify_checkpoint(path: str | Path) -> dict:
    """Check a checkpoint folder (format, every file present, SHA-256) without loading any
    tensor; returns its ``state.json``. Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    state = read_json(path / "state.json")
    if state.get("format") != "polymixer.checkpoint/1":
        raise CheckpointError(f"{path / 'state.json'}: not a polymixer training checkpoint (format {state.get('format')!r})")
    for name in FILES:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint")
        if sha256_file(file) != state.get("sha256", {}).get(name):
            raise CheckpointError(f"{file}: checksum mismatch (truncated or corrupt checkpoint)")
    return state


def newest_intact_checkpoint(folder: str | Path, before: int | None = None) -> Path | None:
    """The newest checkpoint of ``folder`` (earlier than step ``before``, if given) that passes
    :func:`verify_checkpoint`, or None."""
    for step, path in reversed(list_checkpoints(folder)):
        if before is not None and step >= before:
            continue
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


def save_checkpoint(
    folder: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict,
    rng: dict[str, torch.Tensor],
    extra: dict,
) -> Path:
    """Write ``folder/step_<step>/`` atomically and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=folder))
    try:
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        save_tensors(tmp / "model.safetensors", model)
        save_tensors(tmp / "ema.safetensors", ema)
        save_tensors(tmp / "optimizer.safetensors", {**opt_tensors, **{f"rng/{k}": v for k, v in rng.items()}})
        state = {
            "format": "polymixer.checkpoint/1",
            "step": step,
            "optimizer": opt_meta,
            "sha256": {name: sha256_file(tmp / name) for name in FILES},
            **extra,
        }
        write_json(tmp / "state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Read and verify a checkpoint folder; returns a dict with ``step``, ``model``, ``ema``,
    ``optimizer`` (a ``state_dict``), ``rng`` and the JSON ``state``. Nothing is loaded into
    any module here, so a bad checkpoint never leaves a half-loaded model."""
    path = Path(path)
    state = verify_checkpoint(path)
    opt = load_tensors(path / "optimizer.safetensors", device="cpu")
    rng = {k[4:]: v for k, v in opt.items() if k.startswith("rng/")}
    return {
        "step": int(state["step"]),
        "model": load_tensors(path / "model.safetensors", device=device),
        "ema": load_tensors(path / "ema.safetensors", device=device),
        "optimizer": unflatten_optimizer({k: v for k, v in opt.items() if not k.startswith("rng/")}, state["optimizer"]),
        "rng": rng,
        "state": state,
    }

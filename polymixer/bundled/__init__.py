"""Checkpoints shipped inside the package, found offline by name.

Each subfolder here (``demo``: the MNIST PoM-DiT of ``polymixer demo``) is a sampling folder:
``config.json`` + ``model.safetensors`` (+ ``pipeline.json``). Only the folders listed in
``[tool.setuptools.package-data]`` of ``pyproject.toml`` go into the wheel; large checkpoints
that should not ship belong in the top-level ``checkpoints/`` folder of the repository.

    from polymixer import bundled_checkpoint
    from polymixer.sample import load_for_sampling
    model, pipeline = load_for_sampling(bundled_checkpoint("demo"))
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_checkpoint", "bundled_checkpoints"]


def _root() -> Path:
    # A regular package installed as files (wheel, editable install or checkout): a real folder.
    return Path(str(resources.files(__name__)))


def bundled_checkpoints() -> list[str]:
    """The names of the checkpoints shipped with this installation, sorted."""
    root = _root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file())


def bundled_checkpoint(name: str = "demo") -> Path:
    """The folder of the bundled checkpoint ``name`` (e.g. ``"demo"``), for ``load_for_sampling``.

    Works from a checkout, an editable install and an installed wheel; nothing is downloaded.
    Raises ``TypeError`` if ``name`` is not a string and ``ValueError`` naming the available
    checkpoints if there is none of that name (or its weights are missing).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected the name of a bundled checkpoint (str), got {type(name).__name__}")
    available = bundled_checkpoints()
    if name not in available or "/" in name or "\\" in name:
        raise ValueError(f"name: no bundled checkpoint {name!r}; this installation ships {available}")
    path = _root() / name
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"name: the bundled checkpoint {name!r} at {path} has no model.safetensors "
                         "(a broken installation: reinstall polymixer)")
    return path

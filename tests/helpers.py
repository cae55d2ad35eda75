"""Helpers shared by the test files (importable as ``helpers``: pytest puts tests/ on sys.path)."""

import torch


def random_weights(model, dtype=None, *, scale: float = 0.1, seed: int = 1, eval: bool = True):
    """Every parameter of ``model`` drawn from N(0, scale^2) with a fixed generator (the zero
    adaLN and output initialisation would hide most bugs), then cast to ``dtype`` (if given)
    and put in eval mode (unless ``eval=False``). Returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval() if eval else model

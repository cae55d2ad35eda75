"""A drop-in replacement for ``torch.nn.MultiheadAttention`` backed by a PolynomialMixer."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_positive_int
from .mixer import PolynomialMixer

__all__ = ["PolynomialMultiheadAttention"]


class PolynomialMultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention``'s interface on top of :class:`PolynomialMixer`.

    ``forward(query, key, value, key_padding_mask=None, need_weights=False,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` returns
    ``(output, None)``; shapes are (L, B, E) or, with ``batch_first=True``, (B, L, E).

    PoM reads one context tensor: ``key`` gives the context and ``value`` must be the
    same tensor (as in self-attention and the usual cross-attention). What cannot be
    honoured raises: ``need_weights=True`` (PoM has no attention weights), dropout,
    ``add_bias_kv``, ``add_zero_attn``, ``kdim``/``vdim`` other than ``embed_dim``,
    float attention masks that are not 0/-inf. Boolean masks follow PyTorch: True means
    *not allowed*. A causal ``attn_mask`` (or ``is_causal=True``) runs the O(N) causal
    mode; any other ``attn_mask`` runs the dense O(L*S) mode.

    ``num_heads`` sets the gate heads of the mixer (one gate scalar per head); pass
    ``num_heads=1`` for the paper's channel-wise gate.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        degree: int = 2,
        expand: int = 2,
        variant: str = "product",
    ):
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        check_positive_int("num_heads", num_heads)
        if dropout != 0.0:
            raise ValueError(f"dropout: PolynomialMultiheadAttention has no attention dropout, got {dropout}")
        if add_bias_kv:
            raise ValueError("add_bias_kv: not supported by PolynomialMultiheadAttention")
        if add_zero_attn:
            raise ValueError("add_zero_attn: not supported by PolynomialMultiheadAttention")
        for name, value in (("kdim", kdim), ("vdim", vdim)):
            if value is not None and value != embed_dim:
                raise ValueError(f"{name}: must equal embed_dim={embed_dim} for PoM, got {value}")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.mixer = PolynomialMixer(
            embed_dim, degree=degree, expand=expand, variant=variant, heads=num_heads,
            bias=bias if variant == "product" else None, device=device, dtype=dtype,
        )

    @staticmethod
    def _as_allowed(name: str, m: torch.Tensor) -> torch.Tensor:
        """PyTorch masks (True / -inf = masked) to allowed-token bool masks."""
        if m.dtype == torch.bool:
            return ~m
        if m.dtype.is_floating_point:
            finite = torch.isfinite(m)
            if bool(((m != 0) & finite).any()):
                raise ValueError(f"{name}: float masks must hold only 0 and -inf for PoM (no additive biases)")
            return finite
        raise TypeError(f"{name}: expected a bool or float mask, got dtype {m.dtype}")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("need_weights: PoM has no attention weights; call with need_weights=False")
        if value is not key and (value.shape != key.shape or not torch.equal(value, key)):
            raise ValueError("value: PoM reads a single context tensor; value must be the same tensor as key")
        if query.dim() == 2:  # unbatched (L, E): add a batch axis and remove it after
            axis = 0 if self.batch_first else 1
            padding = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
            out, _ = self.forward(query.unsqueeze(axis), key.unsqueeze(axis), value.unsqueeze(axis),
                                  padding, False, attn_mask, average_attn_weights, is_causal)
            return out.squeeze(axis), None
        if query.dim() != 3 or key.dim() != 3:
            raise ValueError(f"query/key: expected rank 3 (or 2 unbatched), got {query.dim()} and {key.dim()}")
        x, c = (query, key) if self.batch_first else (query.transpose(0, 1), key.transpose(0, 1))
        B, L, S = x.shape[0], x.shape[1], c.shape[1]
        context_mask = None
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(f"key_padding_mask: expected shape (B, S) = ({B}, {S}), got {tuple(key_padding_mask.shape)}")
            context_mask = self._as_allowed("key_padding_mask", key_padding_mask)
        kwargs: dict = {}
        if attn_mask is not None:
            allowed = self._as_allowed("attn_mask", attn_mask)
            if allowed.dim() == 3:
                if allowed.shape[0] == B * self.num_heads and self.num_heads > 1:
                    heads_view = allowed.view(B, self.num_heads, L, S)
                    if not bool((heads_view == heads_view[:, :1]).all()):
                        raise ValueError("attn_mask: per-head masks that differ between heads are not supported by PoM")
                    allowed = heads_view[:, 0]
                elif allowed.shape[0] != B:
                    raise ValueError(f"attn_mask: expected (L, S), (B, L, S) or (B*heads, L, S), got {tuple(allowed.shape)}")
            elif allowed.dim() != 2:
                raise ValueError(f"attn_mask: expected rank 2 or 3, got shape {tuple(attn_mask.shape)}")
            is_causal_mask = (
                allowed.dim() == 2 and L == S
                and torch.equal(allowed, torch.ones(L, S, dtype=torch.bool, device=allowed.device).tril())
            )
            if is_causal_mask:
                kwargs["causal"] = True
            else:
                if allowed.dim() == 2:
                    allowed = allowed.unsqueeze(0).expand(B, -1, -1)
                if context_mask is not None:
                    allowed = allowed & context_mask.unsqueeze(1)
                    context_mask = None
                kwargs["mask"] = allowed
        elif is_causal:
            kwargs["causal"] = True
        out = self.mixer(x, None if query is key else c, context_mask=context_mask, **kwargs)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

"""A drop-in replacement for ``torch.nn.MultiheadAttention`` backed by a PolynomialMixer.

:class:`PolynomialMultiheadAttention` takes ``nn.MultiheadAttention``'s constructor and call
signature, and works inside PyTorch's own ``nn.TransformerEncoderLayer``,
``nn.TransformerDecoderLayer``, ``nn.TransformerEncoder``, ``nn.TransformerDecoder`` and
``nn.Transformer``, in training and in eval / inference mode.
:func:`replace_multihead_attention` swaps every ``nn.MultiheadAttention`` of a model for it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ._checks import check_positive_int
from ..ops.plan import compiling
from .mixer import PolynomialMixer

__all__ = ["PolynomialMultiheadAttention", "replace_multihead_attention"]

logger = logging.getLogger(__name__)



class _NoPackedProjection:
    """Stands for ``nn.MultiheadAttention.in_proj_weight`` / ``in_proj_bias``, which PoM has not.

    PyTorch's transformer modules read these attributes when they decide whether to run their
    fused multi-head-attention kernels (``torch._transformer_encoder_layer_fwd``, nested
    tensors). This object defines ``__torch_function__``, so ``torch.overrides.
    has_torch_function`` is True for it and those checks decline with the reason "some Tensor
    argument has_torch_function" instead of failing with an AttributeError. It holds no
    numbers: handing it to any torch function raises a TypeError, so it can never stand in
    for real weights.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise TypeError(
            "PolynomialMultiheadAttention has no packed query/key/value projection "
            "(in_proj_weight / in_proj_bias): PoM computes polynomial features instead; "
            f"its weights are in .mixer (called with {getattr(func, '__name__', func)})"
        )

    def __repr__(self) -> str:
        return f"<no {self.name}: PolynomialMultiheadAttention has no packed q/k/v projection>"


class PolynomialMultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention``'s interface on top of :class:`PolynomialMixer`.

    ``forward(query, key, value, key_padding_mask=None, need_weights=False,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` returns
    ``(output, None)``. Shapes: ``query: (L, B, E)``, ``key = value: (S, B, E)``, output
    ``(L, B, E)``; with ``batch_first=True`` ``(B, L, E)``, ``(B, S, E)``, ``(B, L, E)``;
    unbatched ``(L, E)``, ``(S, E)``, ``(L, E)``.

    PoM reads one context tensor: ``key`` gives the context and ``value`` must be the
    same tensor (as in self-attention and the usual cross-attention). What cannot be
    honoured raises: ``need_weights=True`` (PoM has no attention weights), dropout,
    ``add_bias_kv``, ``add_zero_attn``, ``kdim``/``vdim`` other than ``embed_dim``,
    nested-tensor inputs.

    Masks follow PyTorch. ``key_padding_mask: (B, S)`` and ``attn_mask: (L, S)``,
    ``(B, L, S)`` or ``(B*num_heads, L, S)`` (the same for every head) are boolean (True =
    *not allowed*) or float with entries 0 (allowed) and -inf (not allowed), the form
    PyTorch's transformer modules convert boolean masks to; other float values (additive
    biases) raise a ValueError (inside ``torch.compile`` that check is skipped and any
    non-zero entry masks). ``is_causal=True`` runs the O(L) causal mode; it is
    PyTorch's hint that ``attn_mask``, when one is given too, is the causal mask, and the
    mask is then not read. Without the hint, an ``attn_mask`` that is exactly causal (such
    as ``nn.Transformer.generate_square_subsequent_mask(L)``) also runs the causal mode,
    and any other ``attn_mask`` runs the dense O(L*S) mode. A padding mask combines with
    the causal mode at O(L) cost. A query whose context is empty reads a zero state.

    Inside PyTorch's transformer modules the layer always takes their ordinary (non-fused)
    path: ``_qkv_same_embed_dim`` is False and ``in_proj_weight``/``in_proj_bias`` are
    placeholders without numbers that make the fused-kernel and nested-tensor checks
    decline. ``out_proj`` is the mixer's output projection ``W_o: (E, F)``.

    Args:
        embed_dim: width E.
        num_heads: the gate heads of the mixer (one gate scalar per head); ``num_heads=1``
            gives the paper's channel-wise gate. It must divide the state width F.
        bias: the product variant's output-projection bias (the power variant has none).
        batch_first: inputs and output are (B, L, E) instead of (L, B, E).
        dropout, add_bias_kv, add_zero_attn, kdim, vdim: accepted for signature
            compatibility; only their neutral values (0.0, False, False, None or
            ``embed_dim``) are allowed.
        device, dtype: of the parameters.
        degree, expand, variant, implementation: passed to :class:`PolynomialMixer`.
    """

    # Read by PyTorch's transformer modules when they choose their fused inference path;
    # these values make every such check decline (see _NoPackedProjection).
    _qkv_same_embed_dim = False
    in_proj_weight = _NoPackedProjection("in_proj_weight")
    in_proj_bias = _NoPackedProjection("in_proj_bias")
    bias_k = None
    bias_v = None
    add_zero_attn = False
    dropout = 0.0

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        degree: int = 2,
        expand: int = 2,
        variant: str = "product",
        implementation: str = "fused",
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
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first: expected a bool, got {type(batch_first).__name__} ({batch_first!r})")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.kdim = self.vdim = embed_dim
        self.mixer = PolynomialMixer(
            embed_dim, degree=degree, expand=expand, variant=variant, heads=num_heads,
            bias=bias if variant == "product" else None, implementation=implementation,
            device=device, dtype=dtype,
        )

    @property
    def out_proj(self) -> nn.Linear:
        """The mixer's output projection ``W_o`` (an ``nn.Linear`` from F to E)."""
        return self.mixer.out_proj

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"

    @staticmethod
    def _as_allowed(name: str, m: torch.Tensor) -> torch.Tensor:
        """PyTorch masks (True / -inf = masked) to allowed-token bool masks (True = allowed)."""
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(m).__name__}")
        if m.dtype == torch.bool:
            return ~m
        if m.dtype.is_floating_point:
            allowed = m == 0
            if compiling():  # the value check would break the graph; -inf and any non-zero mask
                return allowed
            bad = ~(allowed | (m == float("-inf")))
            if bool(bad.any()):
                example = m[bad].flatten()[0].item()
                raise ValueError(
                    f"{name}: float masks must hold only 0 and -inf for PoM (no additive biases), "
                    f"got a value {example}"
                )
            return allowed
        raise TypeError(f"{name}: expected a bool or float mask, got dtype {m.dtype}")

    @staticmethod
    def _check_mask_dtype(name: str, m: torch.Tensor) -> None:
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(m).__name__}")
        if m.dtype != torch.bool and not m.dtype.is_floating_point:
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
        """Mix ``query`` with the context ``key`` (= ``value``); returns ``(output, None)``.

        Shapes (``batch_first=False``): ``query: (L, B, E)``, ``key``/``value: (S, B, E)``,
        ``key_padding_mask: (B, S)``, ``attn_mask: (L, S)`` / ``(B, L, S)`` /
        ``(B*num_heads, L, S)``; output ``(L, B, E)``. See the class docstring for masks.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.is_nested:
                raise TypeError(
                    f"{name}: nested tensors are not supported by PolynomialMultiheadAttention; "
                    "pass a padded tensor and a key_padding_mask"
                )
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
            self._check_mask_dtype("key_padding_mask", key_padding_mask)
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(f"key_padding_mask: expected shape (B, S) = ({B}, {S}), got {tuple(key_padding_mask.shape)}")
            context_mask = self._as_allowed("key_padding_mask", key_padding_mask)
        kwargs: dict = {}
        if is_causal:
            # PyTorch's hint: attn_mask (if given) is the causal mask; it is not read (O(L)).
            if L != S:
                raise ValueError(f"is_causal: needs as many queries as context tokens, got L={L} and S={S}")
            if attn_mask is not None:
                self._check_mask_dtype("attn_mask", attn_mask)
                if attn_mask.dim() not in (2, 3) or tuple(attn_mask.shape[-2:]) != (L, S):
                    raise ValueError(
                        f"attn_mask: expected shape (L, S) = ({L}, {S}) or (B or B*heads, L, S), "
                        f"got {tuple(attn_mask.shape)}"
                    )
            kwargs["causal"] = True
        elif attn_mask is not None:
            self._check_mask_dtype("attn_mask", attn_mask)
            allowed = self._as_allowed("attn_mask", attn_mask)
            if allowed.dim() == 3:
                if allowed.shape[0] == B * self.num_heads and self.num_heads > 1:
                    heads_view = allowed.view(B, self.num_heads, allowed.shape[1], allowed.shape[2])
                    if not bool((heads_view == heads_view[:, :1]).all()):
                        raise ValueError("attn_mask: per-head masks that differ between heads are not supported by PoM")
                    allowed = heads_view[:, 0]
                elif allowed.shape[0] != B:
                    raise ValueError(
                        f"attn_mask: expected (L, S), (B, L, S) or (B*heads, L, S) with B={B}, "
                        f"heads={self.num_heads}, got {tuple(allowed.shape)}"
                    )
            elif allowed.dim() != 2:
                raise ValueError(f"attn_mask: expected rank 2 or 3, got shape {tuple(attn_mask.shape)}")
            if tuple(allowed.shape[-2:]) != (L, S):
                raise ValueError(f"attn_mask: expected the last two dimensions (L, S) = ({L}, {S}), got {tuple(attn_mask.shape)}")
            if L == S and bool((allowed == torch.ones(L, S, dtype=torch.bool, device=allowed.device).tril()).all()):
                kwargs["causal"] = True  # exactly causal (for every batch row): the O(L) mode
            else:
                if allowed.dim() == 2:
                    allowed = allowed.unsqueeze(0).expand(B, -1, -1)
                if context_mask is not None:
                    allowed = allowed & context_mask.unsqueeze(1)
                    context_mask = None
                kwargs["mask"] = allowed
        out = self.mixer(x, None if query is key else c, context_mask=context_mask, **kwargs)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def replace_multihead_attention(
    model: nn.Module,
    *,
    degree: int = 2,
    expand: int = 2,
    variant: str = "product",
    implementation: str = "fused",
) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a :class:`PolynomialMultiheadAttention`.

    Each replacement has the same ``embed_dim``, ``num_heads``, ``batch_first``, bias
    setting, device, dtype and train/eval mode, and fresh PoM parameters (``degree``,
    ``expand``, ``variant``, ``implementation`` as in :class:`PolynomialMixer`). The
    model is changed in place; every other module and parameter is left as it was. An
    attention module registered under several names (shared weights) becomes one shared
    replacement. Attention dropout has no PoM counterpart (there are no attention weights
    to drop) and is left out; the dropout modules around the attention stay. Hooks
    registered on the old attention modules are not carried over.

    Every module is checked before any is replaced: one that PoM cannot stand in for
    (``kdim``/``vdim`` other than ``embed_dim``, ``add_bias_kv=True``,
    ``add_zero_attn=True``) raises a ValueError naming its path, and the model is then
    unchanged. The replaced paths are logged (logger ``polymixer.nn.adapter``, level INFO).

    Returns ``model`` (or, when ``model`` itself is an ``nn.MultiheadAttention``, its
    replacement).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    options = dict(degree=degree, expand=expand, variant=variant, implementation=implementation)

    def build(path: str, attn: nn.MultiheadAttention) -> PolynomialMultiheadAttention:
        where = path or "model"
        if not attn._qkv_same_embed_dim:
            raise ValueError(
                f"{where}: kdim={attn.kdim} and vdim={attn.vdim} must equal embed_dim={attn.embed_dim} "
                "to be replaced by PolynomialMultiheadAttention (PoM reads one context tensor)"
            )
        if attn.bias_k is not None or attn.bias_v is not None:
            raise ValueError(f"{where}: add_bias_kv=True cannot be replaced by PolynomialMultiheadAttention")
        if attn.add_zero_attn:
            raise ValueError(f"{where}: add_zero_attn=True cannot be replaced by PolynomialMultiheadAttention")
        weight = attn.out_proj.weight
        new = PolynomialMultiheadAttention(
            attn.embed_dim, attn.num_heads, bias=attn.in_proj_bias is not None,
            batch_first=attn.batch_first, device=weight.device, dtype=weight.dtype, **options,
        )
        return new.train(attn.training)

    if isinstance(model, nn.MultiheadAttention):
        new = build("", model)
        logger.info("replaced nn.MultiheadAttention by PolynomialMultiheadAttention: the model itself")
        return new

    # First pass: find (and check, and build) every replacement; second pass: swap them in.
    swaps: list[tuple[nn.Module, str, str, nn.Module]] = []
    built: dict[int, PolynomialMultiheadAttention] = {}
    for parent_path, parent in model.named_modules():
        for child_name, child in parent._modules.items():
            if isinstance(child, nn.MultiheadAttention):
                path = f"{parent_path}.{child_name}" if parent_path else child_name
                if id(child) not in built:
                    built[id(child)] = build(path, child)
                swaps.append((parent, child_name, path, built[id(child)]))
    for parent, child_name, _, new in swaps:
        setattr(parent, child_name, new)
    logger.info(
        "replaced %d nn.MultiheadAttention module(s) by PolynomialMultiheadAttention: %s",
        len(swaps), ", ".join(path for _, _, path, _ in swaps) or "none",
    )
    return model

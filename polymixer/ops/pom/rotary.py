"""Rotary positions inside the mixer (docs/design.md, section 8).

The F channels of the features form F/2 consecutive pairs ``(2m, 2m+1)``; pair m of a
token at position p is rotated by the angle ``p . theta_m`` (``R_p``, block-diagonal).
Each context token's features are rotated by its own position *before* the mean, so the
state is still one sum per context set and every context mode keeps its O(N)
aggregation (and the streaming state its exactness): ``H~_i = mean_{j in C_i} R_{p_j} h_j``.
The query side reads it in one of two places (``MixerSpec.rotary_query``):

* ``"state"`` (default): the mean is rotated back by the query's own position before the
  gate, ``y_i = W_o (s_i * R_{-p_i} H~_i) + b_o``. Each channel pair then carries
  ``R_{p_j - p_i} h_j``: the output depends on relative positions only, exactly
  (shifting every position by a constant leaves it unchanged).
* ``"gate"``: the gate is rotated by the query's position (widened to F first when it has
  one scalar per head), ``y_i = W_o ((R_{p_i} s_i) * H~_i) + b_o``: the placement of the
  authors' 2026 code. Summed over a pair, ``(R_{p_i} s) . (R_{p_j} h)`` depends on
  ``p_j - p_i`` only, but the two channels of a pair separately do not, so the output is
  relative only where ``W_o`` sums the pair.

Positions have A axes (1: a sequence, 2: row and column of an image, 3: frame, row and
column of a video); :func:`rotary_layout` gives each pair an axis (pairs taken in turn
by the axes) and a frequency (geometric per axis, from ``max_freq`` per token down to
``min_freq``), and :func:`rotary_angles` the angles of given positions.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ROTARY_QUERY", "rotary_layout", "rotary_angles", "rotate", "turns", "rotate_by", "widen_gate"]

#: Where the query's position enters (see the module docstring).
ROTARY_QUERY = ("state", "gate")


def rotary_layout(pairs: int, axes: int, max_freq: float = math.pi, min_freq: float = math.pi / 32,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frequencies (pairs,) float64, axis (pairs,) int64)`` of ``pairs`` channel pairs
    over ``axes`` position axes: pair m rotates with axis ``m % axes``; the pairs of one
    axis have frequencies spread geometrically from ``max_freq`` to ``min_freq`` radians per
    unit of position (one pair: ``max_freq``). With ``max_freq = pi`` the fastest pair
    alternates sign from one token to the next; ``min_freq = pi / (4 * grid)`` turns by a
    quarter turn over a grid of ``grid`` tokens (base 10000 would leave most pairs almost
    still over an 8 x 8 grid)."""
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs: expected a positive int, got {pairs!r}")
    if isinstance(axes, bool) or not isinstance(axes, int) or not 1 <= axes <= pairs:
        raise ValueError(f"axes: expected an int in [1, {pairs}] (at least one channel pair per axis), got {axes!r}")
    if not (0 < min_freq <= max_freq):
        raise ValueError(f"min_freq, max_freq: expected 0 < min_freq <= max_freq, got {min_freq!r}, {max_freq!r}")
    frequencies = []
    for m in range(pairs):  # plain Python: constants under torch.compile
        a, rank = m % axes, m // axes
        per_axis = (pairs - a + axes - 1) // axes  # the pairs of axis a
        fraction = rank / (per_axis - 1) if per_axis > 1 else 0.0
        frequencies.append(max_freq * (min_freq / max_freq) ** fraction)
    return (torch.tensor(frequencies, dtype=torch.float64, device=device),
            torch.tensor([m % axes for m in range(pairs)], dtype=torch.int64, device=device))


def rotary_angles(positions: torch.Tensor, frequencies: torch.Tensor, axis: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Angles ``(..., N, pairs)`` of tokens at ``positions: (..., N, A)`` (int or float
    coordinates on A axes): ``positions[..., axis[m]] * frequencies[m]``, in ``dtype``
    (float64 inputs stay float64)."""
    dtype = torch.float64 if positions.dtype == torch.float64 else dtype
    picked = positions.to(dtype).index_select(-1, axis.to(positions.device))
    return picked * frequencies.to(device=positions.device, dtype=dtype)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def turns(angles: torch.Tensor) -> torch.Tensor:
    """The unit complex numbers ``exp(i * angles)`` (complex64, complex128 for float64
    angles): the rotations of :func:`rotate_by`, computed once and reused (a sine and a
    cosine per angle cost more than the rotation itself)."""
    angles = angles if angles.dtype in (torch.float32, torch.float64) else angles.float()
    # cos + i sin from the vectorised cos and sin: 3-6x faster than torch.polar on CPU
    # (one thread, 1,024 x 128 angles: 0.5-1.0 ms against 2.8-3.8 ms), equal to 1e-7
    return torch.complex(torch.cos(angles), torch.sin(angles))


def rotate_by(h: torch.Tensor, turn: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``R h`` with the rotations given as :func:`turns` ``(..., F/2)`` (broadcast against
    h's leading dimensions; ``inverse``: ``R^T h``, the opposite angles); the result has the
    broadcast shape, in h's dtype."""
    if h.shape[-1] % 2 != 0:
        raise ValueError(f"h: rotary positions rotate channel pairs; the width {h.shape[-1]} is odd")
    if turn.shape[-1] != h.shape[-1] // 2:
        raise ValueError(f"angles: expected {h.shape[-1] // 2} angles (one per channel pair), got {turn.shape[-1]}")
    if inverse:
        turn = turn.conj()
    complex_dtype = _COMPLEX.get(h.dtype)
    if complex_dtype is not None:  # one complex product: about 2.5x faster than the real form on CPU
        return torch.view_as_real(torch.view_as_complex(h.contiguous().unflatten(-1, (-1, 2)))
                                  * turn.to(complex_dtype)).flatten(-2)
    cos, sin = turn.real.to(h.dtype), turn.imag.to(h.dtype)  # bf16/fp16: no complex type
    pairs = h.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def rotate(h: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``R h``: pair m ``(h[2m], h[2m+1])`` of ``h: (..., F)`` rotated by ``angles[..., m]``
    (``angles: (..., F/2)``, broadcast against h's leading dimensions); the result has the
    broadcast shape, in h's dtype. Orthogonal: ``rotate(rotate(h, a), -a) == h``."""
    if angles.shape[-1] != h.shape[-1] // 2 and h.shape[-1] % 2 == 0:
        raise ValueError(f"angles: expected {h.shape[-1] // 2} angles (one per channel pair), got {angles.shape[-1]}")
    return rotate_by(h, turns(angles))


def widen_gate(s: torch.Tensor, width: int) -> torch.Tensor:
    """A gate ``s: (..., G)`` of one scalar per head as the (..., F) gate it acts as (each
    head's scalar on its F/G consecutive channels); a full-width gate unchanged."""
    if s.shape[-1] == width:
        return s
    return s.repeat_interleave(width // s.shape[-1], dim=-1)

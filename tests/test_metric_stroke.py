"""Stroke-quality metrics (issue 23): stroke statistics on drawn shapes and against a flood
fill, their Fréchet distance (about 0 for real against real, growing with speckle and with
pixel dropout), the classifier's texture features, k-NN precision and recall, and the keys
``polymixer eval`` writes."""

from collections import deque

import numpy as np
import pytest
import torch

from polymixer.metrics import load_digit_classifier
from polymixer.metrics.stroke import (STROKE_STATISTICS, count_ink_fragments, precision_recall, standardize,
                                      stroke_frechet_distance, stroke_statistics)


def _canvas(n=1, size=16):
    return torch.full((n, 1, size, size), -1.0)


def _stats(x):
    return dict(zip(STROKE_STATISTICS, stroke_statistics(x)[0]))


# ---------------------------------------------------------------- statistics on drawn shapes


def test_statistics_of_drawn_shapes():
    bar = _canvas()
    bar[0, 0, 4:12, 7:9] = 1.0  # an 8x2 bar: one piece, no specks, no holes
    s = _stats(bar)
    assert s["ink"] == 16 and s["fragments"] == 0 and s["stray_pixels"] == 0 and s["pinholes"] == 0
    # total variation: 8 rows with a left and a right edge, 2 columns with a top and a bottom edge
    assert s["edge_per_ink"] == pytest.approx((8 * 2 + 2 * 2) / 16)

    specks = bar.clone()
    specks[0, 0, 1, 1] = 1.0   # a lone pixel: a stray pixel and a fragment
    specks[0, 0, 14, 2] = 1.0  # another one
    specks[0, 0, 1, 13:15] = 1.0  # a 2-pixel blob: a fragment; each of its pixels has one neighbour
    s = _stats(specks)
    assert s["fragments"] == 3 and s["stray_pixels"] == 4 and s["pinholes"] == 0

    diagonal = _canvas()
    for i in range(3, 9):
        diagonal[0, 0, i, i] = 1.0  # 8-connected: one piece
    assert _stats(diagonal)["fragments"] == 0

    block = _canvas()
    block[0, 0, 4:9, 4:9] = 1.0
    block[0, 0, 6, 6] = -1.0  # a hole inside a stroke
    s = _stats(block)
    assert s["pinholes"] == 1 and s["fragments"] == 0 and s["ink"] == 24

    empty = stroke_statistics(_canvas(2))
    assert np.array_equal(empty, np.zeros((2, len(STROKE_STATISTICS))))


def _flood_fill_count(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for r0 in range(h):
        for c0 in range(w):
            if not mask[r0, c0] or seen[r0, c0]:
                continue
            count += 1
            seen[r0, c0] = True
            queue = deque([(r0, c0)])
            while queue:
                r, c = queue.popleft()
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            queue.append((rr, cc))
    return count


def test_fragment_count_matches_a_flood_fill():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 1, 13, 11, generator=g) < torch.linspace(0.05, 0.6, 40).view(40, 1, 1, 1)
    counts = count_ink_fragments(masks)
    expected = [_flood_fill_count(m[0].numpy()) for m in masks]
    assert counts.tolist() == expected
    assert max(expected) > 5  # the sample has images in many pieces
    with pytest.raises(ValueError, match="ink: expected a bool tensor"):
        count_ink_fragments(masks.float())


def test_statistics_are_deterministic_and_checked():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 1, 32, 32, generator=g) * 2 - 1
    a = stroke_statistics(x)
    assert a.shape == (30, len(STROKE_STATISTICS)) and a.dtype == np.float64
    assert np.array_equal(a, stroke_statistics(x.clone()))
    assert np.array_equal(a, stroke_statistics(x, batch_size=7))  # batching changes nothing
    with pytest.raises(ValueError, match="images: expected 1-channel"):
        stroke_statistics(torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError, match="images: expected a tensor"):
        stroke_statistics(np.zeros((2, 1, 32, 32)))


# ---------------------------------------------------------------- on real digits: floor and degradations


@pytest.fixture(scope="module")
def digits():
    from polymixer.data import mnist_digits

    x = mnist_digits(32).images
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:2000]], x[perm[3000:4000]]  # a reference, and 1,000 other real digits


@pytest.fixture(scope="module")
def reference(digits):
    ref, _ = digits
    clf = load_digit_classifier()
    with torch.no_grad():
        texture = clf.texture_features(ref).double()
    return {"strokes": stroke_statistics(ref), "texture": texture.numpy(), "classifier": clf}


def _salt_and_pepper(x, p, seed=0):
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(u < p / 2, -1.0, torch.where(u < p, 1.0, x))


def _ink_dropout(x, p, seed=0):
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(u < p, -1.0, x)


def _texture_distance(reference, x):
    from polymixer.metrics import frechet_distance_from_features

    with torch.no_grad():
        t = reference["classifier"].texture_features(x).double().numpy()
    ref = reference["texture"]
    return frechet_distance_from_features(standardize(t, ref), standardize(ref, ref))


def test_real_against_real_is_near_zero(digits, reference):
    _, other = digits
    floor = stroke_frechet_distance(stroke_statistics(other), reference["strokes"])
    assert 0 <= floor < 0.15
    assert stroke_frechet_distance(reference["strokes"], reference["strokes"]) == pytest.approx(0, abs=1e-9)
    assert _texture_distance(reference, other) < 1.0


@pytest.mark.parametrize("degrade, amounts", [(_salt_and_pepper, (0.002, 0.005, 0.01, 0.02)),
                                              (_ink_dropout, (0.05, 0.1, 0.2, 0.4))])
def test_distances_grow_with_speckle_and_dropout(digits, reference, degrade, amounts):
    _, other = digits
    x = other[:300]
    clean = stroke_frechet_distance(stroke_statistics(x), reference["strokes"])
    stroke = [stroke_frechet_distance(stroke_statistics(degrade(x, p)), reference["strokes"]) for p in amounts]
    texture = [_texture_distance(reference, degrade(x, p)) for p in amounts]
    assert stroke[0] > 5 * max(clean, 0.05), (clean, stroke)
    assert all(a < b for a, b in zip(stroke, stroke[1:])), stroke
    assert texture[0] > _texture_distance(reference, x)
    assert all(a < b for a, b in zip(texture, texture[1:])), texture


def test_classifier_texture_features_and_unchanged_penultimate(digits, reference):
    import torch.nn.functional as F

    clf = reference["classifier"]
    x = digits[1][:64]
    h, t = clf.features_and_texture(x)
    assert t.shape == (64, clf.texture_dim) and clf.texture_dim == sum(clf.config.channels)
    assert torch.equal(t, clf.texture_features(x))
    # the penultimate features are exactly those of the original recipe (old results stay comparable)
    y = F.max_pool2d(F.relu(clf.conv1(x)), 2)
    y = F.max_pool2d(F.relu(clf.conv2(y)), 2)
    y = F.max_pool2d(F.relu(clf.conv3(y)), 2)
    assert torch.equal(h, clf.hidden(y.flatten(1))) and torch.equal(h, clf.features(x))
    assert (t >= 0).all()  # averages of ReLU outputs


# ---------------------------------------------------------------- precision and recall


def test_precision_recall_toy_cases():
    g = np.random.default_rng(0)
    real = g.standard_normal((200, 4))
    p, r = precision_recall(real, real.copy())
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(real, real + 100.0)  # far away: nothing inside either manifold
    assert p == 0.0 and r == 0.0
    # generated points on half of the real cloud only: precise, but half the real points are missed
    half = real[real[:, 0] > 0]
    p, r = precision_recall(real, half)
    assert p == 1.0 and 0.3 < r < 0.8
    with pytest.raises(ValueError, match="k: expected a positive int"):
        precision_recall(real, real, k=0)
    with pytest.raises(ValueError, match="generated_features: expected 4 columns"):
        precision_recall(real, real[:, :3])
    with pytest.raises(ValueError, match="with N > k = 3"):
        precision_recall(real, real[:3])


def test_standardize():
    ref = np.array([[1.0, 5.0], [3.0, 5.0]])
    assert np.allclose(standardize(ref, ref), [[-1.0, 0.0], [1.0, 0.0]])  # a constant column is only centred
    with pytest.raises(ValueError, match="features: expected"):
        standardize(np.zeros((2, 3)), ref)

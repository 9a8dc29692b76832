"""Tests for the Pointer Networks evaluation metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from apps.ptrnet.generate import convex_hull_target, delaunay_target, tsp_target_held_karp
from apps.ptrnet.metrics import (
    batch_delaunay_metrics,
    batch_hull_metrics,
    batch_tour_length,
    batch_tsp_metrics,
    canonical_cycle,
    clean_cycle_prediction,
    delaunay_metrics,
    hull_metrics,
    is_simple_polygon,
    polygon_area,
    tour_length,
    tsp_metrics,
)

# Unit square (0..3) plus an interior point (4) and a point on the bottom edge (5).
SQUARE = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5], [0.5, 0.0]], dtype=np.float32)
SQUARE_HULL = [0, 1, 2, 3]


def test_canonical_cycle_rotation_and_reflection_invariance() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = int(rng.integers(1, 12))
        cycle = rng.choice(100, size=k, replace=False).tolist()
        ref = canonical_cycle(cycle)
        assert ref[0] == min(cycle) and sorted(ref) == sorted(cycle)
        if k > 2:
            assert ref[1] < ref[-1]
        for shift in range(k):
            rotated = cycle[shift:] + cycle[:shift]
            assert canonical_cycle(rotated) == ref
            assert canonical_cycle(rotated[::-1]) == ref
            assert canonical_cycle(rotated + rotated[:1]) == ref
            assert canonical_cycle(torch.tensor(rotated)) == ref
    assert canonical_cycle([]) == ()


def test_clean_cycle_prediction() -> None:
    assert clean_cycle_prediction([3, 1, 2, 3, 0, 0]) == [3, 1, 2]
    assert clean_cycle_prediction([0, 2, 1, -1, -1]) == [0, 2, 1]
    assert clean_cycle_prediction(np.array([1, 2, 2, 0])) == [1, 2, 2, 0]
    assert clean_cycle_prediction([]) == []


def test_hull_metrics_exact_square() -> None:
    m = hull_metrics(SQUARE, [0, 1, 2, 3, 0], SQUARE_HULL)
    assert m == {"exact": 1.0, "valid": 1.0, "area_coverage": 1.0}
    # clockwise, rotated, with junk after the closing index
    m = hull_metrics(SQUARE, [2, 1, 0, 3, 2, 4, 4], SQUARE_HULL + [0])
    assert m["exact"] == 1.0 and m["valid"] == 1.0 and m["area_coverage"] == pytest.approx(1.0)


def test_hull_metrics_self_intersecting_is_invalid() -> None:
    m = hull_metrics(SQUARE, [0, 2, 1, 3, 0], SQUARE_HULL)
    assert m["exact"] == 0.0 and m["valid"] == 0.0 and math.isnan(m["area_coverage"])


def test_hull_metrics_repeated_point_is_invalid() -> None:
    m = hull_metrics(SQUARE, [0, 1, 2, 1, 3, 0], SQUARE_HULL)
    assert m["valid"] == 0.0 and m["exact"] == 0.0


def test_hull_metrics_missing_vertex_partial_coverage() -> None:
    m = hull_metrics(SQUARE, [0, 1, 2], SQUARE_HULL)
    assert m["exact"] == 0.0 and m["valid"] == 1.0
    assert m["area_coverage"] == pytest.approx(0.5)
    m = hull_metrics(SQUARE, [0, 1, 2, 4], SQUARE_HULL)  # interior point instead of a corner
    assert m["valid"] == 1.0 and m["area_coverage"] == pytest.approx(0.5)


def test_hull_metrics_degenerate_predictions() -> None:
    assert hull_metrics(SQUARE, [0, 1], SQUARE_HULL)["valid"] == 0.0
    assert hull_metrics(SQUARE, [0, 5, 1], SQUARE_HULL)["valid"] == 0.0  # collinear: zero area
    assert hull_metrics(SQUARE, [0, 1, 9], SQUARE_HULL)["valid"] == 0.0  # out of range
    # vertex 5 (on the bottom side) touches the non-adjacent edge (0, 1): not simple
    assert not is_simple_polygon(SQUARE, [0, 1, 2, 5, 3])
    assert is_simple_polygon(SQUARE, [0, 5, 1, 2, 3])


def test_polygon_area_sign() -> None:
    assert polygon_area(SQUARE, SQUARE_HULL) == pytest.approx(1.0)
    assert polygon_area(SQUARE, SQUARE_HULL[::-1]) == pytest.approx(-1.0)


def test_simple_polygon_points_in_convex_position() -> None:
    # For points in convex position the convex polygon is the only simple one: every other
    # vertex order self-intersects.
    rng = np.random.default_rng(1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=7))
    order = rng.permutation(7)
    pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)[order]
    convex = canonical_cycle(np.argsort(order).tolist())
    simple = [
        (0, *perm) for perm in itertools.permutations(range(1, 7)) if is_simple_polygon(pts, [0, *perm])
    ]
    assert {canonical_cycle(c) for c in simple} == {convex}
    assert len(simple) == 2  # the two orientations


def test_batch_hull_metrics_lists_and_tensors() -> None:
    rng = np.random.default_rng(2)
    points = [rng.random((n, 2), dtype=np.float32) for n in (8, 10, 12, 9)]
    targets = [convex_hull_target(p) for p in points]
    preds = [targets[0], targets[1][::-1], [0, 0, 1], targets[3][:-1]]
    out = batch_hull_metrics(points, preds, targets)
    per = [hull_metrics(p, y, t) for p, y, t in zip(points, preds, targets)]
    assert out["exact"] == pytest.approx(0.5)
    assert out["valid"] == pytest.approx(np.mean([r["valid"] for r in per]))
    assert out["failure_rate"] == pytest.approx(1 - out["valid"])
    coverage = [r["area_coverage"] for r in per if r["valid"]]
    assert out["area_coverage"] == pytest.approx(np.mean(coverage))
    assert out["count"] == 4

    # stacked tensors with -1 padding give the same result for equal n
    pts = torch.tensor(np.stack([rng.random((10, 2), dtype=np.float32) for _ in range(3)]))
    tgts = [convex_hull_target(p.numpy()) for p in pts]
    width = max(len(t) for t in tgts) + 1
    padded_t = torch.full((3, width), -1)
    padded_p = torch.full((3, width + 2), -1)
    for b, t in enumerate(tgts):
        padded_t[b, : len(t)] = torch.tensor(t)
        padded_p[b, : len(t) + 1] = torch.tensor(t[::-1] + t[-1:])
    out = batch_hull_metrics(pts, padded_p, padded_t)
    assert out["exact"] == 1.0 and out["failure_rate"] == 0.0 and out["area_coverage"] == pytest.approx(1.0)


def test_batch_hull_metrics_length_mismatch() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        batch_hull_metrics([SQUARE], [[0, 1, 2]], [])


def test_delaunay_metrics() -> None:
    rng = np.random.default_rng(3)
    pts = rng.random((15, 2), dtype=np.float32)
    target = delaunay_target(pts)
    tris = [target[i : i + 3] for i in range(0, len(target), 3)]
    shuffled = [t[::-1] for t in tris[::-1]]
    flat = [i for t in shuffled for i in t]
    assert delaunay_metrics(pts, flat, target) == {"exact": 1.0, "triangle_coverage": 1.0}
    dropped = [i for t in tris[1:] for i in t]
    m = delaunay_metrics(pts, dropped + [0, 1], target)  # incomplete trailing triple ignored
    assert m["exact"] == 0.0
    assert m["triangle_coverage"] == pytest.approx((len(tris) - 1) / len(tris))
    extra = target + [0, 1, 2] if [0, 1, 2] not in tris else target + [0, 1, 3]
    assert delaunay_metrics(pts, extra, target) == {"exact": 0.0, "triangle_coverage": 1.0}
    out = batch_delaunay_metrics([pts, pts], [flat, dropped], [target, target])
    assert out["exact"] == 0.5
    assert out["triangle_coverage"] == pytest.approx((1 + (len(tris) - 1) / len(tris)) / 2)


def test_tour_length_and_tsp_gap_known_case() -> None:
    square = SQUARE[:4]
    assert tour_length(square, [0, 1, 2, 3]) == pytest.approx(4.0)
    assert tour_length(square, [0, 1, 2, 3, 0]) == pytest.approx(4.0)
    crossing = 2 + 2 * math.sqrt(2)
    m = tsp_metrics(square, [0, 2, 1, 3, 0], [0, 1, 2, 3])
    assert m["valid"] == 1.0
    assert m["length"] == pytest.approx(crossing)
    assert m["optimal_length"] == pytest.approx(4.0)
    assert m["gap"] == pytest.approx(crossing / 4 - 1)
    m = tsp_metrics(square, [3, 2, 1, 0], [0, 1, 2, 3])
    assert m["gap"] == pytest.approx(0.0)
    m = tsp_metrics(square, [0, 1, 1, 3], [0, 1, 2, 3])
    assert m["valid"] == 0.0 and math.isnan(m["length"]) and math.isnan(m["gap"])
    assert m["optimal_length"] == pytest.approx(4.0)
    assert tsp_metrics(square, [0, 1, 2], [0, 1, 2, 3])["valid"] == 0.0


def test_batch_tsp_metrics_and_torch_lengths() -> None:
    rng = np.random.default_rng(4)
    points = rng.random((6, 8, 2), dtype=np.float32)
    targets = [tsp_target_held_karp(p) for p in points]
    preds = [rng.permutation(8).tolist() for _ in range(5)] + [[0, 0]]
    out = batch_tsp_metrics(points, preds, targets)
    per = [tsp_metrics(p, y, t) for p, y, t in zip(points, preds, targets)]
    assert out["valid"] == pytest.approx(5 / 6)
    assert out["failure_rate"] == pytest.approx(1 / 6)
    assert out["gap"] == pytest.approx(np.mean([r["gap"] for r in per[:5]]))
    assert all(r["gap"] >= -1e-9 for r in per[:5])

    lengths = batch_tour_length(torch.tensor(points), torch.tensor(targets))
    assert lengths.shape == (6,)
    expected = [tour_length(p, t) for p, t in zip(points, targets)]
    assert lengths.double().numpy() == pytest.approx(expected, rel=1e-5)
    pts = torch.tensor(points, requires_grad=True)
    batch_tour_length(pts, torch.tensor(targets)).sum().backward()
    assert pts.grad is not None and torch.isfinite(pts.grad).all()
    with pytest.raises(ValueError, match="expected points"):
        batch_tour_length(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))

"""Tests for the exact solvers, example generation and dataset caching."""

from __future__ import annotations

import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import Delaunay

from apps.ptrnet import generate
from apps.ptrnet.formats import read_examples
from apps.ptrnet.generate import (
    build_dataset,
    canonical_tour,
    convex_hull_target,
    delaunay_target,
    generate_examples,
    meta_path,
    solver_name,
    tsp_target_held_karp,
    tsp_target_lkh,
    tsp_targets_held_karp,
)


def _brute_force_hull(points: np.ndarray) -> set[int]:
    """Indices of hull vertices: i is a vertex iff some edge (i, j) has all other points strictly left."""
    pts = points.astype(np.float64)
    n = len(pts)
    vertices = set()
    for i, j in itertools.permutations(range(n), 2):
        others = [k for k in range(n) if k not in (i, j)]
        d = pts[j] - pts[i]
        rel = pts[others] - pts[i]
        cross = d[0] * rel[:, 1] - d[1] * rel[:, 0]
        if np.all(cross > 0):
            vertices.update((i, j))
    return vertices


def _cycle_area(points: np.ndarray, cycle: list[int]) -> float:
    p = points[cycle].astype(np.float64)
    return 0.5 * float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(np.roll(p[:, 0], -1), p[:, 1]))


def _tour_len(points: np.ndarray, tour) -> float:
    p = points[list(tour)].astype(np.float64)
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def _brute_force_tsp(points: np.ndarray) -> tuple[float, tuple[int, ...]]:
    n = len(points)
    best = (np.inf, ())
    for perm in itertools.permutations(range(1, n)):
        tour = (0, *perm)
        length = _tour_len(points, tour)
        if length < best[0]:
            best = (length, tour)
    return best


def test_convex_hull_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(3, 16))
        pts = rng.random((n, 2), dtype=np.float32)
        cycle = convex_hull_target(pts)
        assert set(cycle) == _brute_force_hull(pts)
        assert cycle[0] == min(cycle)
        assert len(set(cycle)) == len(cycle)
        assert _cycle_area(pts, cycle) > 0  # counter-clockwise


def test_convex_hull_square_with_interior_and_edge_points() -> None:
    pts = np.array([[0.5, 0.5], [1, 1], [0, 1], [0.5, 0.0], [1, 0], [0, 0]], dtype=np.float32)
    # (0.5, 0) lies on an edge: not a vertex
    assert convex_hull_target(pts) == [1, 2, 5, 4]


def test_convex_hull_degenerate_inputs() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        convex_hull_target(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="degenerate"):
        convex_hull_target(np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        convex_hull_target(np.zeros((4, 3)))


def test_delaunay_canonical_form() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        pts = rng.random((int(rng.integers(3, 30)), 2), dtype=np.float32)
        flat = delaunay_target(pts)
        assert len(flat) % 3 == 0
        tris = [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]
        assert all(a < b < c for a, b, c in tris)
        assert tris == sorted(tris)
        expected = sorted(tuple(sorted(s)) for s in Delaunay(pts.astype(np.float64)).simplices.tolist())
        assert tris == expected
        # canonical: independent of the input order of the points
        perm = rng.permutation(len(pts))
        permuted = delaunay_target(pts[perm])
        mapped = sorted(
            tuple(sorted(int(perm[i]) for i in permuted[k : k + 3])) for k in range(0, len(permuted), 3)
        )
        assert mapped == tris


def test_delaunay_square_and_degenerate() -> None:
    pts = np.array([[0, 0], [1, 0], [1.0, 1.0], [0.0, 1.1]], dtype=np.float32)
    flat = delaunay_target(pts)
    assert len(flat) == 6 and set(flat) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="degenerate"):
        delaunay_target(np.array([[0, 0], [1, 1], [2, 2]], dtype=np.float32))


def test_held_karp_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    for n in range(4, 9):
        batch = rng.random((12 if n < 8 else 4, n, 2), dtype=np.float32)
        batched = tsp_targets_held_karp(batch)
        for pts, tour_b in zip(batch, batched):
            tour = tsp_target_held_karp(pts)
            assert tour == tour_b
            assert sorted(tour) == list(range(n))
            assert tour[0] == 0 and tour[1] < tour[-1]
            best_len, best_tour = _brute_force_tsp(pts)
            assert _tour_len(pts, tour) == pytest.approx(best_len, rel=1e-12, abs=1e-12)
            assert tour == canonical_tour(best_tour)


def test_held_karp_small_and_limits() -> None:
    for n in range(0, 4):
        assert tsp_target_held_karp(np.random.default_rng(n).random((n, 2))) == list(range(n))
    with pytest.raises(ValueError, match="Held-Karp is exponential"):
        tsp_target_held_karp(np.zeros((generate.HELD_KARP_HARD_LIMIT + 1, 2)))


def test_held_karp_known_rectangle() -> None:
    # Points on a 2 x 1 rectangle (corners + midpoints of the long sides), shuffled.
    pts = np.array([[0, 0], [2, 1], [1, 0], [0, 1], [2, 0], [1, 1]], dtype=np.float32)
    tour = tsp_target_held_karp(pts)
    assert _tour_len(pts, tour) == pytest.approx(6.0)
    assert tour == [0, 2, 4, 1, 5, 3]


def test_canonical_tour() -> None:
    assert canonical_tour([2, 0, 3, 1]) == [0, 2, 1, 3]
    assert canonical_tour([0, 3, 2, 1, 0]) == [0, 1, 2, 3]
    assert canonical_tour([]) == []


def test_lkh_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "elkai", None)  # makes `import elkai` raise ImportError
    with pytest.raises(ImportError, match="elkai"):
        tsp_target_lkh(np.random.default_rng(0).random((20, 2)))
    with pytest.raises(ImportError, match="elkai"):
        generate_examples("tsp", 20, 2, seed=0, progress=False)


def test_lkh_uses_elkai_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeDistanceMatrix:
        """Stands in for elkai.DistanceMatrix: solves by Held-Karp on the given integer weights."""

        def __init__(self, weights: list[list[int]]) -> None:
            self.weights = np.asarray(weights)

        def solve_tsp(self, runs: int = 10) -> list[int]:
            calls.append(runs)
            tour = generate._held_karp_batch(self.weights[None].astype(np.float64))[0].tolist()
            # like elkai 2.x: closed tour, here in the non-canonical orientation
            return [0] + tour[:0:-1] + [0]

    monkeypatch.setitem(sys.modules, "elkai", types.SimpleNamespace(DistanceMatrix=FakeDistanceMatrix))
    monkeypatch.setattr(generate, "HELD_KARP_MAX_N", 6)
    pts = np.random.default_rng(3).random((8, 2), dtype=np.float32)
    assert tsp_target_lkh(pts, runs=3) == tsp_target_held_karp(pts)
    assert calls == [3]
    examples = generate_examples("tsp", 8, 3, seed=0, progress=False)
    assert all(ex.target == tsp_target_held_karp(ex.points) for ex in examples)


def test_solver_name() -> None:
    assert solver_name("hull", 50) == "scipy.ConvexHull"
    assert solver_name("delaunay", (5, 10)) == "scipy.Delaunay"
    assert solver_name("tsp", 10) == "held-karp"
    assert solver_name("tsp", 50) == "lkh3-elkai"
    assert solver_name("tsp", (5, 20)) == "held-karp+lkh3-elkai"


@pytest.mark.parametrize("task", ["convex_hull", "delaunay", "tsp"])
def test_generate_examples_labels(task: str) -> None:
    examples = generate_examples(task, (4, 9), 30, seed=5, progress=False)
    assert len(examples) == 30
    sizes = {ex.n for ex in examples}
    assert sizes <= set(range(4, 10)) and len(sizes) > 1
    label = {"convex_hull": convex_hull_target, "delaunay": delaunay_target, "tsp": tsp_target_held_karp}[
        task
    ]
    for ex in examples:
        assert ex.task == task
        assert ex.points.dtype == np.float32
        assert ((ex.points >= 0) & (ex.points < 1)).all()
        assert ex.target == label(ex.points)


def test_generate_examples_deterministic_across_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "CHUNK_SIZE", 7)
    one = generate_examples("tsp", (4, 8), 30, seed=11, workers=1, progress=False)
    two = generate_examples("tsp", (4, 8), 30, seed=11, workers=2, progress=False)
    assert one == two
    other = generate_examples("tsp", (4, 8), 30, seed=12, workers=1, progress=False)
    assert other != one


def test_generate_examples_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        generate_examples("hull", 2, 1, seed=0, progress=False)
    with pytest.raises(ValueError, match="n_min=9 > n_max=5"):
        generate_examples("hull", (9, 5), 1, seed=0, progress=False)
    assert generate_examples("hull", 5, 0, seed=0, progress=False) == []


def test_build_dataset_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "hull.txt.gz"
    built = build_dataset(path, "hull", 8, 20, seed=3, workers=1, progress=False)
    assert built == path
    meta = json.loads(meta_path(path).read_text())
    assert meta["task"] == "convex_hull" and meta["n"] == 8 and meta["count"] == 20 and meta["seed"] == 3
    assert meta["solver"] == "scipy.ConvexHull"
    examples = read_examples(path, "convex_hull")
    assert examples == generate_examples("hull", 8, 20, seed=3, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("dataset should have been reused")

    monkeypatch.setattr(generate, "generate_examples", fail)
    mtime = path.stat().st_mtime_ns
    assert build_dataset(path, "convex_hull", 8, 20, seed=3, workers=2, progress=False) == path
    assert path.stat().st_mtime_ns == mtime
    monkeypatch.undo()

    # different parameters regenerate
    build_dataset(path, "hull", 8, 20, seed=4, progress=False)
    assert json.loads(meta_path(path).read_text())["seed"] == 4
    assert read_examples(path, "hull") != examples

    # a data file without metadata (e.g. interrupted build) is regenerated
    meta_path(path).unlink()
    build_dataset(path, "hull", 8, 20, seed=3, progress=False)
    assert read_examples(path, "hull") == examples

"""Synthetic data for the Pointer Networks tasks: planar convex hull, Delaunay triangulation, TSP.

Points are sampled uniformly in ``[0, 1]^2`` (float32) and labelled by an exact solver:

* convex hull: :class:`scipy.spatial.ConvexHull`; the cycle starts at the smallest hull index and
  runs counter-clockwise (the convention of the paper's released files).
* Delaunay: :class:`scipy.spatial.Delaunay`; each triangle sorted ascending, triangles sorted
  lexicographically, flattened.
* TSP: exact Held–Karp dynamic programming (vectorised over subsets and over a batch of
  instances) for ``n <= HELD_KARP_MAX_N``; larger instances use LKH-3 through the optional
  ``elkai`` package (heuristic, not guaranteed optimal). Tours start at point 0 and are oriented so
  that the second node is smaller than the last one.

Generation is deterministic given the seed, independent of the number of workers: examples are
produced in fixed-size chunks, each with its own child of ``np.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import multiprocessing as mp
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull, Delaunay, QhullError
from tqdm.auto import tqdm

from .formats import FORMAT_VERSION, Example, normalize_task, write_examples

logger = logging.getLogger(__name__)

HELD_KARP_MAX_N = 12
"""Largest ``n`` labelled by Held–Karp in :func:`generate_examples`; larger TSP uses ``elkai``."""

HELD_KARP_HARD_LIMIT = 16
"""Largest ``n`` :func:`tsp_target_held_karp` accepts at all (time and memory grow as ``2^n n^2``)."""

CHUNK_SIZE = 1000
"""Examples per seeded chunk. Part of the data definition: changing it changes the generated data."""

GENERATOR_VERSION = 1
"""Bumped whenever the sampling/labelling procedure changes, so cached datasets are rebuilt."""

_HK_BLOCK_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------
# Labelling
# --------------------------------------------------------------------------------------------------


def _as_points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain nan or inf")
    return pts


def _signed_area(pts: np.ndarray, cycle: Sequence[int]) -> float:
    poly = pts[np.asarray(cycle)]
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def convex_hull_target(points: np.ndarray) -> list[int]:
    """Convex hull vertices of ``points`` (shape ``(n, 2)``) as a 0-based cycle.

    The cycle starts at the smallest index on the hull and runs counter-clockwise; it does not
    repeat the first index. Points lying on a hull edge (collinear) are not vertices.

    Raises:
        ValueError: if ``n < 3`` or all points are collinear/coincident (Qhull cannot build a hull).
    """
    pts = _as_points(points)
    n = pts.shape[0]
    if n < 3:
        raise ValueError(f"convex hull needs at least 3 points, got {n}")
    try:
        hull = ConvexHull(pts)
    except QhullError as exc:
        raise ValueError(f"degenerate input for convex hull (collinear or coincident points): {exc}") from exc
    cycle = [int(v) for v in hull.vertices]
    if _signed_area(pts, cycle) < 0:
        cycle.reverse()
    start = cycle.index(min(cycle))
    return cycle[start:] + cycle[:start]


def delaunay_target(points: np.ndarray) -> list[int]:
    """Delaunay triangulation of ``points`` (shape ``(n, 2)``) as a flat list of 0-based triplets.

    Canonical form: each triangle sorted ascending, triangles sorted lexicographically; the result
    has length ``3 * t`` for ``t`` triangles. Duplicate points are left out of the triangulation by
    Qhull.

    Raises:
        ValueError: if ``n < 3`` or the points are degenerate (all collinear).
    """
    pts = _as_points(points)
    n = pts.shape[0]
    if n < 3:
        raise ValueError(f"Delaunay triangulation needs at least 3 points, got {n}")
    try:
        tri = Delaunay(pts)
    except QhullError as exc:
        raise ValueError(f"degenerate input for Delaunay (collinear or coincident points): {exc}") from exc
    simplices = np.sort(tri.simplices.astype(np.int64), axis=1)
    order = np.lexsort((simplices[:, 2], simplices[:, 1], simplices[:, 0]))
    return simplices[order].reshape(-1).tolist()


def canonical_tour(tour: Sequence[int]) -> list[int]:
    """Rotate a closed tour to start at node 0 and orient it so that ``tour[1] < tour[-1]``."""
    tour = [int(t) for t in tour]
    if len(tour) > 1 and tour[0] == tour[-1]:
        tour = tour[:-1]
    if not tour:
        return tour
    start = tour.index(min(tour))
    tour = tour[start:] + tour[:start]
    if len(tour) > 2 and tour[1] > tour[-1]:
        tour = [tour[0]] + tour[:0:-1]
    return tour


@functools.lru_cache(maxsize=32)
def _held_karp_plan(m: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]:
    """Precomputed gather indices for the Held–Karp layers over ``m`` non-start nodes.

    For each popcount ``k = 2..m`` and each pair (subset ``S`` with ``|S| = k``, end node ``j in S``),
    a row ``p`` holds the ``k - 1`` possible predecessors ``i in S \\ {j}``:

    * ``target[p]``: flat dp index ``S * m + j`` (shape ``(P,)``);
    * ``source[p]``: flat dp indices ``(S - {j}) * m + i`` (shape ``(P, k-1)``);
    * ``edge[p]``: flat edge indices ``j * m + i`` (shape ``(P, k-1)``);
    * ``pred[p]``: the predecessor nodes ``i`` (shape ``(P, k-1)``, int8).

    Only feasible transitions are enumerated (``m (m-1) 2^(m-2)`` in total).
    """
    masks = np.arange(1 << m, dtype=np.int64)
    member = ((masks[:, None] >> np.arange(m)) & 1).astype(bool)
    popcount = member.sum(axis=1)
    plan = []
    for k in range(2, m + 1):
        subsets = masks[popcount == k]
        members = np.nonzero(member[subsets])[1].reshape(len(subsets), k)
        subset_of_row = np.repeat(subsets, k)
        end = members.reshape(-1)
        candidates = np.repeat(members, k, axis=0)
        pred = candidates[candidates != end[:, None]].reshape(-1, k - 1)
        target = subset_of_row * m + end
        source = (subset_of_row ^ (1 << end))[:, None] * m + pred
        edge = end[:, None] * m + pred
        plan.append((target, source, edge, pred.astype(np.int8)))
    return tuple(plan)


def _held_karp_batch(dist: np.ndarray) -> np.ndarray:
    """Exact TSP tours for a batch of distance matrices.

    Args:
        dist: ``(B, n, n)`` float64 symmetric distances, ``n >= 4``.

    Returns:
        ``(B, n)`` int64 optimal tours starting at node 0 (orientation not canonicalised).

    ``dp[S * m + j, b]`` (with ``m = n - 1``) is the length of the shortest path of instance ``b``
    that starts at node 0, visits exactly the nodes of subset ``S`` of ``1..n-1`` (bit ``j`` stands
    for node ``j + 1``) and ends at node ``j + 1``. Subsets are processed by popcount; each layer is
    one vectorised gather/add/argmin over all (subset, end, predecessor) triples and the batch, which
    is kept as the last (contiguous) axis.
    """
    batch, n, _ = dist.shape
    m = n - 1
    full = (1 << m) - 1
    nodes = np.arange(m)
    # edge[j * m + i, b] = d(i + 1, j + 1)
    edge_len = np.transpose(dist[:, 1:, 1:], (2, 1, 0)).reshape(m * m, batch)
    dp = np.full(((1 << m) * m, batch), np.inf)
    parent = np.zeros(((1 << m) * m, batch), dtype=np.int8)
    dp[(1 << nodes) * m + nodes] = dist[:, 0, 1:].T
    for target, source, edge, pred in _held_karp_plan(m):
        cand = dp[source] + edge_len[edge]  # (P, k-1, B)
        arg = cand.argmin(axis=1)  # (P, B)
        dp[target] = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :]
        parent[target] = np.take_along_axis(pred, arg, axis=1)
    closing = dp[full * m + nodes] + dist[:, 1:, 0].T  # (m, B)
    node = closing.argmin(axis=0).astype(np.int64)
    tours = np.zeros((batch, n), dtype=np.int64)
    mask = np.full(batch, full, dtype=np.int64)
    rows = np.arange(batch)
    for pos in range(n - 1, 0, -1):
        tours[:, pos] = node + 1
        prev_node = parent[mask * m + node, rows].astype(np.int64)
        mask ^= 1 << node
        node = prev_node
    return tours


def _distance_matrices(points: np.ndarray) -> np.ndarray:
    diff = points[:, :, None, :] - points[:, None, :, :]
    return np.sqrt((diff**2).sum(axis=-1))


def tsp_targets_held_karp(points: np.ndarray) -> list[list[int]]:
    """Exact TSP tours for a batch of instances of equal size.

    Args:
        points: ``(B, n, 2)`` coordinates, ``n <= HELD_KARP_HARD_LIMIT``.

    Returns:
        ``B`` tours of length ``n`` (0-based, no closing repeat) in the canonical form of
        :func:`canonical_tour`.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[2] != 2:
        raise ValueError(f"points must have shape (B, n, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain nan or inf")
    batch, n, _ = pts.shape
    if n > HELD_KARP_HARD_LIMIT:
        raise ValueError(
            f"Held-Karp is exponential (2^n n^2); n={n} exceeds the limit of {HELD_KARP_HARD_LIMIT}. "
            "Use a heuristic solver such as LKH-3 (see tsp_target_lkh)."
        )
    if n <= 3:
        return [list(range(n)) for _ in range(batch)]
    m = n - 1
    # Keep the largest per-layer work array around _HK_BLOCK_BYTES (cache-friendly blocks).
    widest = max(math.comb(m, k) * k * (k - 1) for k in range(2, m + 1))
    sub = int(np.clip(_HK_BLOCK_BYTES // (8 * widest), 1, 256))
    tours: list[list[int]] = []
    for lo in range(0, batch, sub):
        block = _held_karp_batch(_distance_matrices(pts[lo : lo + sub]))
        tours.extend(canonical_tour(t) for t in block.tolist())
    return tours


def tsp_target_held_karp(points: np.ndarray) -> list[int]:
    """Optimal TSP tour of ``points`` (shape ``(n, 2)``) by exact Held–Karp dynamic programming.

    Returns:
        A permutation of ``0..n-1`` starting at 0 with ``tour[1] < tour[-1]`` (no closing repeat).
        For ``n <= 3`` every tour is optimal and ``list(range(n))`` is returned.

    Raises:
        ValueError: for ``n > HELD_KARP_HARD_LIMIT``.
    """
    pts = _as_points(points)
    return tsp_targets_held_karp(pts[None])[0]


def tsp_target_lkh(points: np.ndarray, runs: int = 10) -> list[int]:
    """TSP tour of ``points`` (shape ``(n, 2)``) by LKH-3 through the optional ``elkai`` package.

    LKH-3 is a heuristic: tours are usually, but not provably, optimal. The result is in the
    canonical form of :func:`canonical_tour`.

    Raises:
        ImportError: if ``elkai`` is not installed.
    """
    pts = _as_points(points)
    n = pts.shape[0]
    if n <= 3:
        return list(range(n))
    try:
        elkai = importlib.import_module("elkai")
    except ImportError as exc:
        raise ImportError(
            f"TSP with n={n} needs the optional package 'elkai' (LKH-3 bindings; pip install elkai): "
            f"Held-Karp is only used for n <= {HELD_KARP_MAX_N}"
        ) from exc
    # LKH works on integer weights; scale so that 1e-6 of the unit square is resolved.
    weights = np.rint(_distance_matrices(pts[None])[0] * 1e6).astype(np.int64).tolist()
    if hasattr(elkai, "DistanceMatrix"):  # elkai >= 1.0
        problem = elkai.DistanceMatrix(weights)
        try:
            tour = list(problem.solve_tsp(runs=runs))
        except TypeError:
            tour = list(problem.solve_tsp())
    else:  # elkai 0.x
        tour = list(elkai.solve_int_matrix(weights, runs))
    tour = canonical_tour(int(t) for t in tour)
    if sorted(tour) != list(range(n)):
        raise RuntimeError(f"elkai returned an invalid tour for n={n}: {tour}")
    return tour


def solver_name(task: str, n: int | tuple[int, int]) -> str:
    """Name of the solver that labels ``task`` instances of size ``n`` (int or inclusive range).

    One of ``"scipy.ConvexHull"``, ``"scipy.Delaunay"``, ``"held-karp"``, ``"lkh3-elkai"``, or
    ``"held-karp+lkh3-elkai"`` for a TSP size range spanning both.
    """
    task = normalize_task(task)
    n_min, n_max = _size_range(n)
    if task == "convex_hull":
        return "scipy.ConvexHull"
    if task == "delaunay":
        return "scipy.Delaunay"
    if n_max <= HELD_KARP_MAX_N:
        return "held-karp"
    if n_min > HELD_KARP_MAX_N:
        return "lkh3-elkai"
    return "held-karp+lkh3-elkai"


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def _size_range(n: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    if isinstance(n, (int, np.integer)):
        lo = hi = int(n)
    else:
        seq = list(n)
        if len(seq) != 2:
            raise ValueError(f"n must be an int or an inclusive (n_min, n_max) pair, got {n!r}")
        lo, hi = int(seq[0]), int(seq[1])
    if lo > hi:
        raise ValueError(f"n_min={lo} > n_max={hi}")
    return lo, hi


def _label(task: str, points: np.ndarray) -> list[int]:
    if task == "convex_hull":
        return convex_hull_target(points)
    if task == "delaunay":
        return delaunay_target(points)
    if points.shape[0] <= HELD_KARP_MAX_N:
        return tsp_target_held_karp(points)
    return tsp_target_lkh(points)


def _generate_chunk(args: tuple[str, int, int, int, np.random.SeedSequence]) -> list[Example]:
    """Generate ``size`` examples for one chunk from its own seed (runs in worker processes)."""
    task, n_min, n_max, size, seed_seq = args
    rng = np.random.default_rng(seed_seq)
    sizes = rng.integers(n_min, n_max + 1, size=size) if n_max > n_min else np.full(size, n_min)
    all_points = [rng.random((int(k), 2), dtype=np.float32) for k in sizes]
    targets: list[list[int] | None] = [None] * size
    if task == "tsp":
        # Batch the exact solver over all instances of the same size.
        for k in np.unique(sizes).tolist():
            idx = np.flatnonzero(sizes == k)
            if k <= HELD_KARP_MAX_N:
                solved = tsp_targets_held_karp(np.stack([all_points[i] for i in idx]))
            else:
                solved = [tsp_target_lkh(all_points[i]) for i in idx]
            for i, tour in zip(idx.tolist(), solved):
                targets[i] = tour
    else:
        for i, pts in enumerate(all_points):
            # Degenerate samples (all collinear) are practically impossible for n >= 3 but are
            # redrawn deterministically from the chunk's stream if they occur.
            for attempt in range(100):
                try:
                    targets[i] = _label(task, pts)
                    break
                except ValueError:
                    if pts.shape[0] < 3 or attempt == 99:
                        raise
                    pts = rng.random(pts.shape, dtype=np.float32)
            all_points[i] = pts
    return [Example(points=p, target=t, task=task) for p, t in zip(all_points, targets)]


def generate_examples(
    task: str,
    n: int | tuple[int, int],
    count: int,
    seed: int,
    *,
    workers: int = 1,
    progress: bool = True,
) -> list[Example]:
    """Sample ``count`` labelled instances with points uniform in ``[0, 1]^2``.

    Args:
        task: ``convex_hull`` (or ``hull``), ``delaunay`` or ``tsp``.
        n: points per instance, or an inclusive ``(n_min, n_max)`` range from which each example
            draws its own size.
        count: number of examples.
        seed: the output depends only on ``(task, n, count, seed)``, not on ``workers``.
        workers: processes to use (``<= 1`` runs in this process).
        progress: show a tqdm progress bar.

    Returns:
        ``count`` examples; ``points`` have shape ``(n_i, 2)`` float32.

    Raises:
        ValueError: for sizes below 3 (hull/Delaunay) or 1 (TSP) or a negative count.
        ImportError: for TSP with ``n > HELD_KARP_MAX_N`` when ``elkai`` is missing.
    """
    task = normalize_task(task)
    n_min, n_max = _size_range(n)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    min_n = 1 if task == "tsp" else 3
    if n_min < min_n:
        raise ValueError(f"{task} needs at least {min_n} points per instance, got n_min={n_min}")
    if task == "tsp" and n_max > HELD_KARP_MAX_N:
        try:
            importlib.import_module("elkai")
        except ImportError as exc:
            raise ImportError(
                f"TSP with n up to {n_max}: Held-Karp is only used for n <= {HELD_KARP_MAX_N}; larger "
                "instances need the optional LKH-3 solver package 'elkai' (pip install elkai)"
            ) from exc
    n_chunks = -(-count // CHUNK_SIZE)
    seeds = np.random.SeedSequence(seed).spawn(n_chunks)
    jobs = [(task, n_min, n_max, min(CHUNK_SIZE, count - c * CHUNK_SIZE), seeds[c]) for c in range(n_chunks)]
    logger.info(
        "generating %d %s examples (n=%s, seed=%d, solver=%s, workers=%d)",
        count,
        task,
        n_min if n_min == n_max else (n_min, n_max),
        seed,
        solver_name(task, (n_min, n_max)),
        workers,
    )
    examples: list[Example] = []
    bar = tqdm(total=count, disable=not progress, desc=f"{task} n={n}", unit="ex")
    try:
        if workers <= 1 or n_chunks <= 1:
            for job in jobs:
                chunk = _generate_chunk(job)
                examples.extend(chunk)
                bar.update(len(chunk))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(processes=min(workers, n_chunks)) as pool:
                for chunk in pool.imap(_generate_chunk, jobs):
                    examples.extend(chunk)
                    bar.update(len(chunk))
    finally:
        bar.close()
    return examples


# --------------------------------------------------------------------------------------------------
# Cached datasets
# --------------------------------------------------------------------------------------------------


def meta_path(path: str | os.PathLike[str]) -> Path:
    """Sidecar metadata file of a dataset: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def dataset_metadata(task: str, n: int | tuple[int, int], count: int, seed: int) -> dict:
    """The metadata identifying a generated dataset (compared by :func:`build_dataset`)."""
    task = normalize_task(task)
    n_min, n_max = _size_range(n)
    return {
        "task": task,
        "n": n_min if n_min == n_max else [n_min, n_max],
        "count": int(count),
        "seed": int(seed),
        "solver": solver_name(task, (n_min, n_max)),
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "chunk_size": CHUNK_SIZE,
    }


def _write_json_atomic(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_dataset(
    path: str | os.PathLike[str],
    task: str,
    n: int | tuple[int, int],
    count: int,
    seed: int,
    workers: int = 1,
    *,
    progress: bool = True,
) -> Path:
    """Generate a dataset file at ``path`` (``.gz`` for gzip) unless an identical one is cached.

    The file is reused when it exists and its sidecar ``<path>.meta.json`` records the same task,
    n, count, seed, solver, format and generator version. Otherwise the data is generated and
    written atomically, then the metadata (so an interrupted build is never mistaken for a cached
    one).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    expected = dataset_metadata(task, n, count, seed)
    sidecar = meta_path(path)
    if path.is_file() and sidecar.is_file():
        try:
            found = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            found = None
        if isinstance(found, dict) and all(found.get(k) == v for k, v in expected.items()):
            logger.info("reusing cached dataset %s (%s)", path, expected)
            return path
        logger.info("metadata of %s does not match %s; regenerating", path, expected)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sidecar.exists():
        sidecar.unlink()
    examples = generate_examples(task, n, count, seed, workers=workers, progress=progress)
    write_examples(path, examples, expected["task"])
    _write_json_atomic(sidecar, expected)
    return path

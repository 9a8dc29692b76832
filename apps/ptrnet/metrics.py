"""Evaluation metrics for the Pointer Networks tasks (convex hull, Delaunay, TSP).

All functions take 0-based indices. Predictions are cleaned before scoring:

* a negative index marks padding and ends the prediction;
* for cycles (hull, TSP) the prediction ends before the first re-occurrence of its first index,
  so a closing repeat and anything decoded after it are ignored;
* for Delaunay, a trailing incomplete triplet is ignored.

Cycles are compared up to rotation and reflection (:func:`canonical_cycle`), so a hull predicted
clockwise still counts as exact.

Inputs may be numpy arrays, torch tensors or nested sequences; batch functions accept either a
sequence of per-example arrays (variable ``n``) or stacked ``(B, n, 2)`` / ``(B, T)`` arrays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _to_index_list(x: Any) -> list[int]:
    arr = _to_numpy(x)
    return [int(v) for v in arr.reshape(-1).tolist()]


def _points(points: Any) -> np.ndarray:
    pts = _to_numpy(points).astype(np.float64, copy=False)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {pts.shape}")
    return pts


def _rows(batch: Any) -> list[Any]:
    """Split a batch (sequence, ``(B, ...)`` array or tensor) into per-example rows."""
    return list(batch)


def _cut_padding(seq: list[int]) -> list[int]:
    for pos, v in enumerate(seq):
        if v < 0:
            return seq[:pos]
    return seq


def clean_cycle_prediction(predicted: Any) -> list[int]:
    """Cut a decoded cycle at padding (negative index) and before the first repeat of its start.

    ``[3, 1, 2, 3, 0, 0]`` becomes ``[3, 1, 2]``; ``[0, 2, 1, -1, -1]`` becomes ``[0, 2, 1]``.
    """
    seq = _cut_padding(_to_index_list(predicted))
    if len(seq) > 1:
        try:
            close = seq.index(seq[0], 1)
        except ValueError:
            return seq
        return seq[:close]
    return seq


def canonical_cycle(indices: Any) -> tuple[int, ...]:
    """Canonical representative of a cycle under rotation and reflection.

    A closing repeat (last element equal to the first) is dropped; the cycle is rotated to start at
    its minimum and reversed if needed so that the second element is smaller than the last.

    Args:
        indices: ``(k,)`` node indices of a cycle.

    Returns:
        The canonical ``k``-tuple (``k - 1`` if a closing repeat was dropped).
    """
    seq = _to_index_list(indices)
    if len(seq) > 1 and seq[0] == seq[-1]:
        seq = seq[:-1]
    if not seq:
        return ()
    start = seq.index(min(seq))
    seq = seq[start:] + seq[:start]
    if len(seq) > 2 and seq[1] > seq[-1]:
        seq = [seq[0]] + seq[:0:-1]
    return tuple(seq)


def polygon_area(points: Any, cycle: Sequence[int]) -> float:
    """Signed shoelace area of the polygon ``points[cycle]`` (positive when counter-clockwise).

    Args:
        points: ``(n, 2)`` coordinates.
        cycle: ``(k,)`` vertex indices without closing repeat.
    """
    pts = _points(points)
    if len(cycle) < 3:
        return 0.0
    poly = pts[np.asarray(cycle, dtype=np.int64)]
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
        b[..., 0] - o[..., 0]
    )


def _on_segment(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """For collinear ``p, q, r``: whether ``r`` lies within the bounding box of segment ``pq``."""
    return (
        (np.minimum(p[..., 0], q[..., 0]) <= r[..., 0])
        & (r[..., 0] <= np.maximum(p[..., 0], q[..., 0]))
        & (np.minimum(p[..., 1], q[..., 1]) <= r[..., 1])
        & (r[..., 1] <= np.maximum(p[..., 1], q[..., 1]))
    )


def is_simple_polygon(points: Any, cycle: Sequence[int]) -> bool:
    """Whether ``points[cycle]`` is a simple polygon.

    Requires at least 3 distinct in-range vertices, no two non-adjacent edges touching or crossing,
    no adjacent edges folding back onto each other, and non-zero area. All edge pairs are tested at
    once (``O(k^2)`` vectorised).

    Args:
        points: ``(n, 2)`` coordinates.
        cycle: ``(k,)`` vertex indices without closing repeat.
    """
    pts = _points(points)
    n = pts.shape[0]
    k = len(cycle)
    if k < 3 or len(set(cycle)) != k or any(i < 0 or i >= n for i in cycle):
        return False
    poly = pts[np.asarray(cycle, dtype=np.int64)]
    if len(np.unique(poly, axis=0)) != k:
        return False
    if polygon_area(pts, list(cycle)) == 0.0:
        return False
    start, end = poly, np.roll(poly, -1, axis=0)  # edge e = (start[e], end[e])
    # Adjacent edges e, e+1 share end[e]; they overlap if the turn is a full reversal.
    nxt = np.roll(end, -1, axis=0)
    turn = _cross(start, end, nxt)
    back = ((end - start) * (nxt - end)).sum(axis=1)
    if np.any((turn == 0) & (back < 0)):
        return False
    if k == 3:
        return True
    a, b = np.triu_indices(k, k=2)
    keep = ~((a == 0) & (b == k - 1))  # first and last edges are adjacent
    a, b = a[keep], b[keep]
    p1, p2, q1, q2 = start[a], end[a], start[b], end[b]
    o1, o2 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    o3, o4 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    proper = (np.sign(o1) * np.sign(o2) < 0) & (np.sign(o3) * np.sign(o4) < 0)
    touch = (
        ((o1 == 0) & _on_segment(p1, p2, q1))
        | ((o2 == 0) & _on_segment(p1, p2, q2))
        | ((o3 == 0) & _on_segment(q1, q2, p1))
        | ((o4 == 0) & _on_segment(q1, q2, p2))
    )
    return not bool(np.any(proper | touch))


def hull_metrics(points: Any, predicted: Any, target: Any) -> dict[str, float]:
    """Convex hull metrics of one example.

    Args:
        points: ``(n, 2)`` coordinates.
        predicted: ``(T,)`` decoded indices (closing repeat, padding and trailing junk allowed).
        target: ``(k,)`` true hull cycle (with or without closing repeat).

    Returns:
        ``exact``: 1.0 if the cycles agree up to rotation/reflection; ``valid``: 1.0 if the
        prediction is a simple polygon without repeated points; ``area_coverage``: area of the
        predicted polygon over the area of the true hull (``nan`` when not valid).
    """
    pts = _points(points)
    pred = clean_cycle_prediction(predicted)
    true_cycle = list(canonical_cycle(target))
    exact = float(canonical_cycle(pred) == tuple(true_cycle))
    valid = is_simple_polygon(pts, pred)
    if valid:
        true_area = abs(polygon_area(pts, true_cycle))
        coverage = abs(polygon_area(pts, pred)) / true_area if true_area > 0 else math.nan
    else:
        coverage = math.nan
    return {"exact": exact, "valid": float(valid), "area_coverage": coverage}


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    return float(finite.mean()) if finite.size else math.nan


def _check_batch(*batches: list[Any]) -> int:
    sizes = {len(b) for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"batch inputs have different lengths: {sorted(sizes)}")
    return sizes.pop()


def batch_hull_metrics(points_list: Any, preds_list: Any, targets_list: Any) -> dict[str, float]:
    """Mean convex hull metrics over a batch.

    Args:
        points_list: ``B`` arrays ``(n_i, 2)`` or one ``(B, n, 2)`` array/tensor.
        preds_list: ``B`` index sequences or a ``(B, T)`` array/tensor (pad with ``-1``).
        targets_list: ``B`` index sequences or a ``(B, T')`` array/tensor (pad with ``-1``).

    Returns:
        ``exact``, ``valid``, ``failure_rate`` (``1 - valid``), ``area_coverage`` (mean over valid
        predictions, ``nan`` if none) and ``count``.
    """
    pts, preds, targets = _rows(points_list), _rows(preds_list), _rows(targets_list)
    count = _check_batch(pts, preds, targets)
    rows = [hull_metrics(p, y, _cut_padding(_to_index_list(t))) for p, y, t in zip(pts, preds, targets)]
    valid = float(np.mean([r["valid"] for r in rows])) if rows else math.nan
    return {
        "exact": float(np.mean([r["exact"] for r in rows])) if rows else math.nan,
        "valid": valid,
        "failure_rate": 1.0 - valid,
        "area_coverage": _nanmean([r["area_coverage"] for r in rows]),
        "count": float(count),
    }


def triangles(flat: Any) -> set[tuple[int, int, int]]:
    """Set of triangles (sorted index triples) from a flat index list.

    Padding (a negative index) ends the list; an incomplete trailing triple is ignored.
    """
    seq = _cut_padding(_to_index_list(flat))
    usable = len(seq) - len(seq) % 3
    arr = np.sort(np.asarray(seq[:usable], dtype=np.int64).reshape(-1, 3), axis=1)
    return {(int(a), int(b), int(c)) for a, b, c in arr.tolist()}


def delaunay_metrics(points: Any, predicted_flat: Any, target_flat: Any) -> dict[str, float]:
    """Delaunay metrics of one example.

    Args:
        points: ``(n, 2)`` coordinates (only their count is used).
        predicted_flat: ``(3 t',)`` predicted triangles as consecutive triples.
        target_flat: ``(3 t,)`` true triangles.

    Returns:
        ``exact``: 1.0 if the triangle sets are equal; ``triangle_coverage``: fraction of true
        triangles present in the prediction.
    """
    n = _points(points).shape[0]
    pred = {t for t in triangles(predicted_flat) if t[0] >= 0 and t[2] < n}
    true = triangles(target_flat)
    coverage = len(pred & true) / len(true) if true else math.nan
    return {"exact": float(pred == true), "triangle_coverage": coverage}


def batch_delaunay_metrics(points_list: Any, preds_list: Any, targets_list: Any) -> dict[str, float]:
    """Mean :func:`delaunay_metrics` over a batch (same input conventions as :func:`batch_hull_metrics`)."""
    pts, preds, targets = _rows(points_list), _rows(preds_list), _rows(targets_list)
    count = _check_batch(pts, preds, targets)
    rows = [delaunay_metrics(p, y, t) for p, y, t in zip(pts, preds, targets)]
    return {
        "exact": float(np.mean([r["exact"] for r in rows])) if rows else math.nan,
        "triangle_coverage": _nanmean([r["triangle_coverage"] for r in rows]),
        "count": float(count),
    }


def tour_length(points: Any, tour: Any) -> float:
    """Length of the closed tour ``points[tour]`` (a closing repeat in ``tour`` is ignored).

    Args:
        points: ``(n, 2)`` coordinates.
        tour: ``(k,)`` indices.
    """
    pts = _points(points)
    seq = _to_index_list(tour)
    if len(seq) > 1 and seq[0] == seq[-1]:
        seq = seq[:-1]
    if len(seq) < 2:
        return 0.0
    route = pts[np.asarray(seq, dtype=np.int64)]
    return float(np.linalg.norm(route - np.roll(route, -1, axis=0), axis=1).sum())


def batch_tour_length(points: Any, tours: Any) -> torch.Tensor:
    """Closed-tour lengths for a batch, in torch (differentiable w.r.t. ``points``).

    Args:
        points: ``(B, n, 2)`` float tensor/array.
        tours: ``(B, k)`` integer tensor/array of indices (no padding, no closing repeat).

    Returns:
        ``(B,)`` tensor of tour lengths, on the device/dtype of ``points``.
    """
    pts = points if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points))
    idx = tours if isinstance(tours, torch.Tensor) else torch.as_tensor(np.asarray(tours))
    idx = idx.to(device=pts.device, dtype=torch.long)
    if pts.dim() != 3 or pts.shape[-1] != 2 or idx.dim() != 2 or idx.shape[0] != pts.shape[0]:
        raise ValueError(
            f"expected points (B, n, 2) and tours (B, k), got {tuple(pts.shape)}, {tuple(idx.shape)}"
        )
    route = pts.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
    return (route - route.roll(-1, dims=1)).norm(dim=-1).sum(dim=1)


def tsp_metrics(points: Any, predicted: Any, target: Any) -> dict[str, float]:
    """TSP metrics of one example.

    Args:
        points: ``(n, 2)`` coordinates.
        predicted: ``(T,)`` decoded tour (closing repeat, padding and trailing junk allowed).
        target: ``(n,)`` reference (optimal) tour.

    Returns:
        ``valid`` (1.0 if the prediction is a permutation of all ``n`` points), ``length``
        (``nan`` if invalid), ``optimal_length`` and ``gap = length / optimal_length - 1``
        (``nan`` if invalid).
    """
    pts = _points(points)
    n = pts.shape[0]
    pred = clean_cycle_prediction(predicted)
    valid = len(pred) == n and sorted(pred) == list(range(n))
    optimal = tour_length(pts, target)
    if valid:
        length = tour_length(pts, pred)
        if optimal > 0:
            gap = length / optimal - 1.0
        else:
            gap = 0.0 if length == 0 else math.inf
    else:
        length = gap = math.nan
    return {"valid": float(valid), "length": length, "optimal_length": optimal, "gap": gap}


def batch_tsp_metrics(points_list: Any, preds_list: Any, targets_list: Any) -> dict[str, float]:
    """Mean :func:`tsp_metrics` over a batch (same input conventions as :func:`batch_hull_metrics`).

    Returns:
        ``valid``, ``failure_rate``, ``length`` and ``gap`` (means over valid predictions),
        ``optimal_length`` (mean over all) and ``count``.
    """
    pts, preds, targets = _rows(points_list), _rows(preds_list), _rows(targets_list)
    count = _check_batch(pts, preds, targets)
    rows = [tsp_metrics(p, y, _cut_padding(_to_index_list(t))) for p, y, t in zip(pts, preds, targets)]
    valid = float(np.mean([r["valid"] for r in rows])) if rows else math.nan
    return {
        "valid": valid,
        "failure_rate": 1.0 - valid,
        "length": _nanmean([r["length"] for r in rows]),
        "optimal_length": _nanmean([r["optimal_length"] for r in rows]),
        "gap": _nanmean([r["gap"] for r in rows]),
        "count": float(count),
    }

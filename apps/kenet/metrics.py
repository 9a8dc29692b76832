"""Multi-label classification metrics (NumPy): ranking (P@k, nDCG@k) and thresholded (F1, Hamming).

Conventions (those of the extreme/multi-label literature, e.g. Bhatia et al.'s XML repository):
- ``P@k = (1/k) Σ_{r≤k} y_{π(r)}`` with ``π`` the labels sorted by score, averaged over documents;
- ``DCG@k = Σ_{r≤k} y_{π(r)} / log2(r + 1)``, ``nDCG@k = DCG@k / Σ_{r≤min(k, |y|)} 1/log2(r + 1)``
  (documents without labels score 0);
- micro-F1 pools true/false positives over all labels; macro-F1 averages per-label F1 over the
  label vocabulary (a label with no positives and no predictions scores 0, as scikit-learn);
- Hamming loss is the fraction of wrong label decisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANKS = (1, 3, 5)


def _check(scores: np.ndarray, targets: np.ndarray) -> None:
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices `(N, k)` of the k highest scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    )
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def precision_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Mean P@k over documents. `scores`, `targets (N, C)`."""
    _check(scores, targets)
    hits = np.take_along_axis(targets, top_k(scores, k), axis=1)
    return float(hits.sum(axis=1).mean() / k)


def ndcg_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Mean nDCG@k over documents. `scores`, `targets (N, C)`."""
    _check(scores, targets)
    top = top_k(scores, k)
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = (np.take_along_axis(targets, top, axis=1) * discounts).sum(axis=1)
    positives = np.minimum(targets.sum(axis=1).astype(int), top.shape[1])
    ideal_table = np.concatenate([[0.0], np.cumsum(discounts)])
    ideal = ideal_table[positives]
    return float(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0).mean())


def f1_counts(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives, false negatives `(C,)` for 0/1 arrays `(N, C)`."""
    predicted = predicted.astype(bool)
    truth = targets.astype(bool)
    tp = (predicted & truth).sum(axis=0)
    fp = (predicted & ~truth).sum(axis=0)
    fn = (~predicted & truth).sum(axis=0)
    return tp, fp, fn


def per_label_f1(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    tp, fp, fn = f1_counts(predicted, targets)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def micro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    tp, fp, fn = f1_counts(predicted, targets)
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    return float(2 * tp.sum() / denominator) if denominator else 0.0


def macro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    return float(per_label_f1(predicted, targets).mean())


def hamming_loss(predicted: np.ndarray, targets: np.ndarray) -> float:
    return float((predicted.astype(bool) != targets.astype(bool)).mean())


def best_threshold(
    scores: np.ndarray, targets: np.ndarray, grid: Sequence[float] | None = None
) -> tuple[float, float]:
    """The global threshold on `scores` (probabilities) that maximises micro-F1; returns (threshold, F1)."""
    _check(scores, targets)
    grid = THRESHOLD_GRID if grid is None else np.asarray(grid)
    best = (0.5, -1.0)
    for threshold in grid:
        score = micro_f1(scores >= threshold, targets)
        if score > best[1]:
            best = (float(threshold), score)
    return best


THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
THRESHOLD_MODES = ("global", "per_label", "per_label_micro")
# per-label thresholds may go lower than the global grid: rare labels rarely reach 0.05
PER_LABEL_GRID = np.concatenate([[0.01, 0.02, 0.03, 0.04], THRESHOLD_GRID])


def per_label_thresholds(
    scores: np.ndarray,
    targets: np.ndarray,
    fallback: float,
    min_support: int = 2,
    grid: Sequence[float] | None = None,
) -> np.ndarray:
    """Per-label thresholds `(C,)` chosen on validation (the "SCut" strategy, Yang 2001).

    Each label with at least `min_support` positive validation documents gets the grid threshold
    that maximises its own F1 (ties: the one closest to `fallback`); every other label, and any
    label whose best F1 is 0, keeps `fallback` (normally the global micro-F1 threshold).
    """
    _check(scores, targets)
    grid = PER_LABEL_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    truth = targets.astype(bool)
    f1 = np.empty((len(grid), scores.shape[1]))
    for row, threshold in enumerate(grid):
        f1[row] = per_label_f1(scores >= threshold, truth)
    # among the best rows of each label, the threshold closest to the fallback
    best = f1.max(axis=0)
    closeness = -np.abs(grid - fallback)[:, None] + np.where(f1 >= best - 1e-12, 0.0, -np.inf)
    chosen = grid[np.argmax(closeness, axis=0)]
    keep = (truth.sum(axis=0) >= min_support) & (best > 0)
    return np.where(keep, chosen, fallback)


def micro_f1_thresholds(
    scores: np.ndarray,
    targets: np.ndarray,
    start: float,
    min_support: int = 2,
    grid: Sequence[float] | None = None,
    passes: int = 2,
) -> np.ndarray:
    """Per-label thresholds `(C,)` that raise validation micro-F1 (coordinate ascent from `start`).

    Each pass gives every label with at least `min_support` validation positives the grid
    threshold that maximises the pooled micro-F1 with the other labels held at their current
    thresholds (all labels updated together from the previous pass's totals). Unlike each label's
    own F1 optimum, a label is only pushed to a low threshold when the true positives it gains
    outweigh the false positives for the pooled score, so micro-F1 does not collapse while badly
    calibrated (often rare) labels still get their own cut-off.
    """
    _check(scores, targets)
    grid = PER_LABEL_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    truth = targets.astype(bool)
    counts = np.empty((3, len(grid), scores.shape[1]))
    for row, threshold in enumerate(grid):
        counts[:, row] = f1_counts(scores >= threshold, truth)
    eligible = truth.sum(axis=0) >= min_support
    columns = np.arange(scores.shape[1])
    current = np.full(scores.shape[1], int(np.argmin(np.abs(grid - start))))
    for _ in range(passes):
        chosen = counts[:, current, columns]  # (3, C) at the current thresholds
        rest = chosen.sum(axis=1, keepdims=True)[:, :, None] - chosen[:, None, :]  # (3, 1, C)
        tp, fp, fn = (counts + rest)[0], (counts + rest)[1], (counts + rest)[2]
        pooled = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.argmax(pooled - 1e-9 * np.abs(grid - start)[:, None], axis=0)  # ties: nearer start
        current = np.where(eligible, best, current)
    return grid[current]


def choose_thresholds(
    scores: np.ndarray, targets: np.ndarray, mode: str = "global", min_support: int = 2
) -> tuple[float, np.ndarray]:
    """The global micro-F1 threshold and the thresholds `(C,)` to use (`mode`: global | per_label)."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode: unknown value {mode!r}; expected one of {THRESHOLD_MODES}")
    global_threshold, _ = best_threshold(scores, targets)
    if mode == "global":
        return global_threshold, np.full(scores.shape[1], global_threshold)
    if mode == "per_label_micro":
        return global_threshold, micro_f1_thresholds(scores, targets, global_threshold, min_support)
    return global_threshold, per_label_thresholds(scores, targets, global_threshold, min_support)


def all_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float | np.ndarray) -> dict[str, float]:
    """Every reported metric: p@1/3/5, ndcg@3/5, micro/macro F1 and Hamming loss at `threshold`
    (one value, or one per label `(C,)`)."""
    _check(scores, targets)
    predicted = scores >= threshold
    out = {f"p@{k}": precision_at_k(scores, targets, k) for k in RANKS}
    out.update({f"ndcg@{k}": ndcg_at_k(scores, targets, k) for k in (3, 5)})
    out["micro_f1"] = micro_f1(predicted, targets)
    out["macro_f1"] = macro_f1(predicted, targets)
    out["hamming"] = hamming_loss(predicted, targets)
    return out


def per_label_report(
    scores: np.ndarray,
    targets: np.ndarray,
    threshold: float | np.ndarray,
    labels: Sequence[str],
    train_counts: Sequence[int],
) -> list[dict[str, float | int | str]]:
    """One row per label: training frequency, test support, threshold, precision, recall, F1."""
    predicted = scores >= threshold
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (scores.shape[1],))
    tp, fp, fn = f1_counts(predicted, targets)
    f1 = per_label_f1(predicted, targets)
    rows = []
    for i, label in enumerate(labels):
        precision = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
        recall = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else 0.0
        rows.append(
            {
                "label": label,
                "train_count": int(train_counts[i]),
                "support": int(tp[i] + fn[i]),
                "predicted": int(tp[i] + fp[i]),
                "threshold": float(thresholds[i]),
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1[i]),
            }
        )
    return rows

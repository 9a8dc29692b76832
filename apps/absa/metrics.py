"""Metrics: accuracy, macro-F1, accuracy by opinion-word frequency, and the agreement between
attention and gradient importance (Kendall τ, weighted τ, Pearson r, top-1 agreement)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import weightedtau
from torch import Tensor

from apps.absa.formats import POLARITIES


def macro_f1(predictions: Tensor, labels: Tensor, num_classes: int = len(POLARITIES)) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in range(num_classes):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall τ-b of two score vectors (ties handled); NaN when either is constant or n < 2."""
    n = len(x)
    if n < 2:
        return float("nan")
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(n, k=1)
    dx, dy = dx[upper], dy[upper]
    concordance = float((dx * dy).sum())
    ties_x, ties_y = float((dx != 0).sum()), float((dy != 0).sum())
    if ties_x == 0 or ties_y == 0:
        return float("nan")
    return concordance / np.sqrt(ties_x * ties_y)


def kendall_tau_rows(weights: Tensor, importance: Tensor, mask: Tensor) -> Tensor:
    """Per sentence, τ between attention ``weights`` and gradient ``importance`` over ``mask``
    (context words); ``(B, L)`` each -> ``(B,)`` (NaN where undefined)."""
    out = []
    for w, g, m in zip(weights.numpy(), importance.numpy(), mask.numpy()):
        out.append(kendall_tau(w[m], g[m]))
    return torch.tensor(out, dtype=torch.float64)


AGREEMENT = ("kendall_tau", "weighted_tau", "pearson", "top1_agreement")


def agreement(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How far two score vectors over a sentence's words rank them alike (NaN where undefined):

    - ``kendall_tau``: τ-b over every pair of words (:func:`kendall_tau`);
    - ``weighted_tau``: scipy's weighted τ (hyperbolic weights by rank, both rankings), so that
      pairs near the top count more than pairs of words neither score cares about;
    - ``pearson``: Pearson r of the values;
    - ``top1_agreement``: 1 if the top word of ``x`` is the top word of ``y``, else 0.
    """
    out = {name: float("nan") for name in AGREEMENT}
    if len(x) < 2:
        return out
    out["kendall_tau"] = kendall_tau(x, y)
    if np.ptp(x) > 0 and np.ptp(y) > 0:
        out["weighted_tau"] = float(weightedtau(x, y).statistic)
        out["pearson"] = float(np.corrcoef(x, y)[0, 1])
    out["top1_agreement"] = float(np.argmax(x) == np.argmax(y))
    return out


def agreement_rows(weights: Tensor, importance: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per sentence, :func:`agreement` of attention ``weights`` and gradient ``importance`` over
    ``mask`` (context words); ``(B, L)`` each -> ``{name: (B,)}``."""
    rows = [agreement(w[m], g[m]) for w, g, m in zip(weights.numpy(), importance.numpy(), mask.numpy())]
    return {name: torch.tensor([r[name] for r in rows], dtype=torch.float64) for name in AGREEMENT}


def defined_mean(values: Tensor) -> float:
    """Mean of the values that are not NaN (NaN when none is)."""
    defined = values[~torch.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def classification_report(
    predictions: Tensor,
    labels: Tensor,
    buckets: Sequence[str] | None = None,
    agreement: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """``acc``, ``macro_f1``, ``acc_<bucket>`` (and ``n_<bucket>``) per opinion-frequency bucket,
    and every measure of :func:`agreement_rows` given in ``agreement`` (each the mean over the
    sentences where it is defined)."""
    report = {
        "acc": float((predictions == labels).double().mean()) if len(labels) else 0.0,
        "macro_f1": macro_f1(predictions, labels),
    }
    if buckets is not None:
        correct = (predictions == labels).numpy()
        names = np.asarray(buckets)
        for name in sorted(set(buckets)):
            selected = names == name
            report[f"acc_{name}"] = float(correct[selected].mean())
            report[f"n_{name}"] = float(selected.sum())
    for name, values in (agreement or {}).items():
        report[name] = defined_mean(values)
    return report

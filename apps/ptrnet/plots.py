"""Pictures of predictions next to the references: hulls, triangulations and tours (PNG, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from apps.ptrnet.formats import normalize_task  # noqa: E402


def _draw(
    ax: plt.Axes,
    task: str,
    points: np.ndarray,
    indices: Sequence[int],
    color: str,
    label: str,
    dashed: bool = False,
) -> None:
    style = "--" if dashed else "-"
    n = len(points)
    seq = [i for i in indices if 0 <= i < n]
    if task == "delaunay":
        usable = len(seq) - len(seq) % 3
        for first in range(0, usable, 3):
            tri = seq[first : first + 3] + [seq[first]]
            ax.plot(
                points[tri, 0],
                points[tri, 1],
                color=color,
                ls=style,
                lw=1.0,
                alpha=0.8,
                label=label if first == 0 else None,
            )
        return
    if not seq:
        return
    cycle = seq + [seq[0]]
    ax.plot(points[cycle, 0], points[cycle, 1], color=color, ls=style, lw=1.4, label=label)


def plot_predictions(
    path: str | Path,
    task: str,
    points: Sequence[np.ndarray],
    predictions: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    title: str = "",
) -> Path:
    """Write one panel per example: points, reference (green, solid) and prediction (red, dashed).

    `points[i] (n_i, 2)`, `predictions[i]` and `targets[i]` 0-based index sequences.
    """
    task = normalize_task(task)
    count = len(points)
    if count == 0:
        raise ValueError("plot_predictions: no examples to plot")
    cols = min(count, 4)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    for ax, pts, pred, tgt in zip(axes.flat, points, predictions, targets):
        pts = np.asarray(pts, dtype=np.float64)
        _draw(ax, task, pts, list(tgt), "tab:green", "reference")
        _draw(ax, task, pts, list(pred), "tab:red", "predicted", dashed=True)
        ax.scatter(pts[:, 0], pts[:, 1], s=10, color="black", zorder=3)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    axes.flat[0].legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

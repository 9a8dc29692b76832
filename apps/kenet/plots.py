"""KeNet plots (PNG, written into the run folder): attention heatmaps and F1 against label frequency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attention_heatmap(
    weights: np.ndarray, tokens: Sequence[str], labels: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Heatmap of `weights (labels, tokens)`: each row is one label's attention over the document."""
    plt = _pyplot()
    width = min(40.0, 2.5 + 0.18 * len(tokens))
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.35 * len(labels)))
    image = ax.imshow(weights, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.02)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_f1_vs_frequency(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per-label test F1 against the label's training frequency (log x), with a binned mean."""
    plt = _pyplot()
    counts = np.array([max(1, int(r["train_count"])) for r in rows], dtype=float)
    f1 = np.array([float(r["f1"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    ax.scatter(counts, f1, s=8, alpha=0.5, label="label")
    edges = np.unique(np.logspace(0, np.log10(counts.max() + 1), 10).astype(int))
    centres, means = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (counts >= low) & (counts < high)
        if inside.any():
            centres.append(np.sqrt(low * high))
            means.append(f1[inside].mean())
    ax.plot(centres, means, color="C3", marker="o", label="binned mean")
    ax.set_xscale("log")
    ax.set_xlabel("training documents with the label")
    ax.set_ylabel("test F1")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("F1 against label frequency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

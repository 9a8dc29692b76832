"""Topic-vs-fact contingency heatmaps and probe-score bars (PNG files next to the run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_topic_contingency(
    topics: Sequence[int], facts: dict[str, Sequence[str]], num_topics: int, path: str | Path
) -> Path:
    """One heatmap per fact: rows = fact values, columns = topics, cells = P(topic | value)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    topics = np.asarray(topics)
    fig, axes = plt.subplots(1, len(facts), figsize=(4.5 * len(facts), 4.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], facts.items()):
        values = np.asarray(values)
        names = sorted(set(values.tolist()))
        table = np.zeros((len(names), num_topics))
        for row, value in enumerate(names):
            counts = np.bincount(topics[values == value], minlength=num_topics)
            table[row] = counts / max(counts.sum(), 1)
        image = ax.imshow(table, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(num_topics))
        ax.set_yticks(range(len(names)), names, fontsize=6 if len(names) > 12 else 8)
        ax.set_xlabel("topic")
        ax.set_title(f"P(topic | {name})")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probe_scores(
    scores: dict[str, float], path: str | Path, title: str = "frozen-feature probes"
) -> Path:
    """Bars of probe scores in [0, 1] (accuracies, and 1 − CER for the CTC probe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.4 * max(len(scores), 2) + 1, 3.5))
    names = list(scores)
    values = [scores[n] for n in names]
    bars = ax.bar(names, values, color="tab:blue")
    for bar, value in zip(bars, values):
        ax.text(
            bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}", ha="center", va="bottom", fontsize=8
        )
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

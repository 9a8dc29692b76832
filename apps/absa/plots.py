"""Sentences with their words shaded by attention (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from apps.absa.formats import POLARITIES  # noqa: E402


def plot_attention(
    rows: Sequence[tuple[Any, Sequence[float], int]], path: str | Path, tags: Sequence[str] | None = None
) -> Path:
    """One line per example: words shaded by attention weight, the aspect boxed, gold/predicted label.

    ``rows``: ``(example, weights, predicted_label)`` with ``example`` an ``EncodedExample``;
    ``tags``: an optional label per row printed first (e.g. ``before`` / ``after``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height = 0.55 * max(1, len(rows)) + 0.4
    fig, ax = plt.subplots(figsize=(12, height))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, len(rows))
    renderer = fig.canvas.get_renderer()
    for line, (example, weights, predicted) in enumerate(rows):
        y = len(rows) - line - 0.5
        peak = max(max(weights, default=0.0), 1e-9)
        x = 0.0
        label = f"gold {POLARITIES[example.label][:3]} / pred {POLARITIES[predicted][:3]}  "
        if tags is not None:
            label = f"{tags[line]:<7}" + label
        text = ax.text(x, y, label, va="center", fontsize=8, family="monospace")
        x += text.get_window_extent(renderer).width / ax.bbox.width + 0.01
        for position, word in enumerate(example.words):
            weight = weights[position] if position < len(weights) else 0.0
            in_aspect = example.aspect_start <= position < example.aspect_end
            box = {
                "facecolor": (1.0, 0.2, 0.1, min(1.0, weight / peak)),
                "edgecolor": "black" if in_aspect else "none",
                "pad": 1.5,
            }
            text = ax.text(x, y, word, va="center", fontsize=9, bbox=box)
            x += text.get_window_extent(renderer).width / ax.bbox.width + 0.006
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

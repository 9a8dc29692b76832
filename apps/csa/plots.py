"""Ground-truth segments against the top proposals on a time axis, CSA's temporal attention under them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_proposals(items: Sequence[tuple[Any, Sequence[dict[str, Any]], Any]], path: str | Path) -> Path:
    """One panel per video: ground truth (top row), proposals by rank with their scores, and below
    the temporal attention of CSA over the feature-covered time (when the model has CSA).

    ``items``: ``(VideoInfo, proposals [{segment, score}], temporal_weights (T,) or None)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(
        2 * len(items),
        1,
        figsize=(10, 3.2 * len(items)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1] * len(items)},
    )
    for row, (video, proposals, temporal) in enumerate(items):
        ax, att = axes[2 * row, 0], axes[2 * row + 1, 0]
        for segment in video.segments:
            ax.barh(0, segment.end - segment.start, left=segment.start, height=0.6, color="tab:green")
            ax.text(segment.start, 0.35, segment.label, fontsize=7)
        for rank, proposal in enumerate(proposals, start=1):
            start, end = proposal["segment"]
            ax.barh(
                rank,
                end - start,
                left=start,
                height=0.6,
                color="tab:blue",
                alpha=0.4 + 0.6 * proposal["score"],
            )
            ax.text(end, rank, f" {proposal['score']:.2f}", va="center", fontsize=7)
        ax.set_yticks(
            range(len(proposals) + 1), ["ground truth", *[f"#{i}" for i in range(1, len(proposals) + 1)]]
        )
        ax.invert_yaxis()
        ax.set_xlim(0, video.duration_second)
        ax.set_title(video.name, fontsize=9)
        covered = video.feature_frame / video.duration_frame * video.duration_second
        if temporal is not None:
            weights = np.asarray(temporal, dtype=float)
            times = (np.arange(len(weights)) + 0.5) / len(weights) * covered
            att.plot(times, weights, color="tab:red")
            att.set_ylabel("CSA time", fontsize=7)
        else:
            att.text(0.5, 0.5, "no CSA temporal attention", ha="center", va="center", transform=att.transAxes)
        att.set_xlim(0, video.duration_second)
        att.set_xlabel("seconds", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Comparison grids: one row per scene; columns: references, vanilla, mutual, isolation, reposition, both."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def save_comparison_grid(columns: dict[str, Tensor], path: str | Path) -> Path:
    """`columns["references"] (P, S, 3, H, W)` and one `(P, 3, H, W)` per variant, images in [0, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refs = columns["references"]
    p, s = refs.shape[:2]
    variants = [name for name in columns if name != "references"]
    titles = [f"ref {i + 1}" for i in range(s)] + variants
    tiles = [[refs[row, i] for i in range(s)] + [columns[v][row] for v in variants] for row in range(p)]
    fig, axes = plt.subplots(p, len(titles), figsize=(1.3 * len(titles), 1.3 * p), squeeze=False)
    for row in range(p):
        for col, image in enumerate(tiles[row]):
            ax = axes[row][col]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

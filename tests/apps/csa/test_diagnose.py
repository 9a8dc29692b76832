"""The CSA diagnostics' pure helpers: length bins, best tIoU, the snippet grid and its ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from apps.csa.diagnose import best_iou, class_agnostic_ap, grid_intervals, length_bin, recall_by_length


def test_length_bins_and_best_iou():
    assert [length_bin(f) for f in (0.02, 0.1, 0.39, 0.6)] == ["short", "medium", "medium", "long"]
    proposals = np.array([[0.0, 0.5], [0.2, 0.4]])
    assert best_iou(proposals, (0.2, 0.5)) == pytest.approx(2 / 3)
    assert best_iou(np.zeros((0, 2)), (0.2, 0.5)) == 0.0


def test_grid_ceiling_by_length():
    grid = grid_intervals(4)
    assert len(grid) == 10 and grid.min() == 0 and grid.max() == 1 and (grid[:, 1] > grid[:, 0]).all()
    # a segment on the grid is found at every threshold; a short one inside a snippet reaches tIoU 0.32 at best
    segments = [(0.25, 0.75), (0.3, 0.38)]
    report = recall_by_length(segments, [grid, grid])
    assert report["long"] == (1.0, 1)
    assert report["short"] == (0.0, 1)
    assert np.isnan(report["medium"][0]) and report["medium"][1] == 0


def test_class_agnostic_ap_and_per_video_normalisation():
    segments = [[(0.1, 0.3)], [(0.5, 0.9)]]
    # each video's best proposal is right, but video 0's false one outscores video 1's true one
    proposals = [[(0.1, 0.3, 0.9), (0.6, 0.8, 0.5)], [(0.5, 0.9, 0.2), (0.0, 0.1, 0.1)]]
    report = class_agnostic_ap(segments, proposals)
    assert report["per_video_max"] == pytest.approx(1.0)  # both true proposals now rank first
    assert report["raw"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision 1 at recall 0.5, 2/3 at 1

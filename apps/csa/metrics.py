"""Proposal and detection metrics through mmaction2's ActivityNet evaluation functions, and the
video-level classifier that labels class-agnostic proposals for detection mAP.

- AR@AN: recall averaged over tIoU 0.5:0.05:0.95 at 1, 5, 10 and 100 proposals per video, and the
  area under the AR–AN curve (AUC, in %), as mmaction2's ``ANetMetric`` computes them.
- mAP: per class AP (mmaction2's ``compute_average_precision_detection``) at the ActivityNet
  thresholds 0.5:0.05:0.95 (and their mean, "average mAP") and at the THUMOS-14 thresholds
  0.3:0.1:0.7. Proposals are labelled by video-level classification — the usual protocol for
  BMN-style localisers: every proposal of a video takes the classifier's top class, its score times
  the class probability. The classifier is the same for every model variant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from apps.csa import mm

ANET_TIOUS = np.linspace(0.5, 0.95, 10)
THUMOS_TIOUS = np.array([0.3, 0.4, 0.5, 0.6, 0.7])


class VideoClassifier:
    """Logistic regression on temporally mean- and max-pooled features ``(N, C, T)`` → classes."""

    def __init__(self, max_iter: int = 500, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(max_iter=max_iter, random_state=seed)

    @staticmethod
    def pooled(features: np.ndarray) -> np.ndarray:
        return np.concatenate([features.mean(axis=2), features.max(axis=2)], axis=1)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> VideoClassifier:
        self.model.fit(self.pooled(features), labels)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """``(N, K')`` probabilities over the classes seen in training (``self.model.classes_``)."""
        return self.model.predict_proba(self.pooled(features))


def proposal_metrics(
    ground_truth: Mapping[str, np.ndarray], proposals: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, float]:
    """AR@1/5/10/100 and AUC from ``{video: (G, 2) seconds}`` and ``{video: [{segment, score}]}``."""
    videos = [v for v in ground_truth if len(ground_truth[v])]
    gt = {v: np.asarray(ground_truth[v], dtype=np.float64).reshape(-1, 2) for v in videos}
    props = {}
    total = 0
    for v in videos:
        rows = [[p["segment"][0], p["segment"][1], p["score"]] for p in proposals.get(v, [])]
        props[v] = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        total += len(rows)
    if total == 0:
        return {"AR@1": 0.0, "AR@5": 0.0, "AR@10": 0.0, "AR@100": 0.0, "AUC": 0.0}
    recall, _, _, auc = mm.average_recall_at_avg_proposals_fn()(
        gt, props, total, max_avg_proposals=100, temporal_iou_thresholds=ANET_TIOUS
    )
    report = {f"AR@{k}": float(recall[:, k - 1].mean()) for k in (1, 5, 10, 100)}
    report["AUC"] = float(auc)
    return report


def detection_metrics(
    ground_truth: Mapping[str, Sequence[tuple[float, float, int]]],
    proposals: Mapping[str, Sequence[Mapping[str, Any]]],
    video_probs: Mapping[str, np.ndarray],
    num_classes: int,
) -> dict[str, float]:
    """mAP at ActivityNet and THUMOS thresholds: ``ground_truth {video: [(start, end, class)]}``
    (seconds), class-agnostic ``proposals``, ``video_probs {video: (K,)}``."""
    ap_fn = mm.average_precision_detection_fn()
    gts: dict[int, list[dict[str, Any]]] = {c: [] for c in range(num_classes)}
    preds: dict[int, list[dict[str, Any]]] = {c: [] for c in range(num_classes)}
    for video, segments in ground_truth.items():
        for start, end, cls in segments:
            gts[cls].append({"video-id": video, "t-start": start, "t-end": end})
        probs = video_probs[video]
        top = int(np.argmax(probs))
        for p in proposals.get(video, []):
            preds[top].append(
                {
                    "video-id": video,
                    "t-start": p["segment"][0],
                    "t-end": p["segment"][1],
                    "score": p["score"] * float(probs[top]),
                }
            )
    present = [c for c in range(num_classes) if gts[c]]
    report: dict[str, float] = {}
    for name, tious in (("anet", ANET_TIOUS), ("thumos", THUMOS_TIOUS)):
        if not present:
            aps = np.zeros(len(tious))
        else:
            aps = np.mean([ap_fn(gts[c], list(preds[c]), tious) for c in present], axis=0)
        for tiou, ap in zip(tious, aps):
            report[f"mAP@{tiou:.2f}"] = float(ap)  # AP at one threshold is the same in both sets
        report[f"avg_mAP_{name}"] = float(np.mean(aps))
    return report

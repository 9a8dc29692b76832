"""AR@AN / AUC and mAP through mmaction2's functions: perfect and empty proposals, classification."""

from __future__ import annotations

import numpy as np
import pytest

from apps.csa.metrics import VideoClassifier, detection_metrics, proposal_metrics


def test_perfect_proposals_and_labels_score_one():
    gt = {"v_a": np.array([[10.0, 20.0], [30.0, 50.0]]), "v_b": np.array([[5.0, 9.0]])}
    proposals = {
        v: [{"segment": list(row), "score": 1.0 - 0.1 * i} for i, row in enumerate(b)] for v, b in gt.items()
    }
    report = proposal_metrics(gt, proposals)
    assert report["AR@100"] == pytest.approx(1.0) and 0.0 < report["AR@1"] < report["AR@100"]
    labelled = {"v_a": [(10.0, 20.0, 0), (30.0, 50.0, 0)], "v_b": [(5.0, 9.0, 1)]}
    probs = {"v_a": np.array([0.9, 0.1]), "v_b": np.array([0.2, 0.8])}
    detection = detection_metrics(labelled, proposals, probs, 2)
    assert detection["avg_mAP_anet"] == pytest.approx(1.0) and detection["mAP@0.30"] == pytest.approx(1.0)
    # a wrong video-level class gives no true positive
    wrong = detection_metrics(
        labelled, proposals, {"v_a": np.array([0.1, 0.9]), "v_b": np.array([0.8, 0.2])}, 2
    )
    assert wrong["avg_mAP_anet"] == 0.0


def test_empty_and_shifted_proposals():
    gt = {"v_a": np.array([[10.0, 20.0]])}
    assert proposal_metrics(gt, {})["AR@100"] == 0.0
    shifted = {"v_a": [{"segment": [15.0, 25.0], "score": 1.0}]}  # tIoU 1/3
    assert proposal_metrics(gt, shifted)["AR@100"] == 0.0
    half = {"v_a": [{"segment": [10.0, 18.0], "score": 1.0}]}  # tIoU 0.8: found at 0.5..0.8
    assert proposal_metrics(gt, half)["AR@100"] == pytest.approx(0.7)


def test_video_classifier_separates_classes():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6, 8))
    labels = np.arange(40) % 2
    features[labels == 1, 0] += 3.0
    clf = VideoClassifier().fit(features, labels)
    assert (clf.predict_proba(features).argmax(1) == labels).mean() > 0.95

"""Multi-label metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.kenet import metrics as mlc

SCORES = np.array([[0.9, 0.8, 0.1, 0.7], [0.2, 0.6, 0.7, 0.1]])
TARGETS = np.array([[1, 0, 0, 1], [0, 0, 0, 1]])


def test_precision_at_k():
    # doc 0 ranking: 0 (hit), 1, 3 (hit); doc 1 ranking: 2, 1, 0, 3 (hit at rank 4)
    assert mlc.precision_at_k(SCORES, TARGETS, 1) == pytest.approx(0.5)
    assert mlc.precision_at_k(SCORES, TARGETS, 3) == pytest.approx((2 / 3 + 0) / 2)


def test_ndcg_at_k():
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3)
    assert mlc.ndcg_at_k(SCORES, TARGETS, 3) == pytest.approx((dcg0 / idcg0 + 0) / 2)
    dcg1 = 1 / math.log2(5)
    assert mlc.ndcg_at_k(SCORES, TARGETS, 5) == pytest.approx((dcg0 / idcg0 + dcg1 / 1.0) / 2)


def test_f1_and_hamming_at_threshold():
    predicted = SCORES >= 0.65  # [[1,1,0,1],[0,0,1,0]]
    # tp = 2, fp = 2, fn = 1 -> micro F1 = 4 / 7
    assert mlc.micro_f1(predicted, TARGETS) == pytest.approx(4 / 7)
    # per-label F1: label0 1.0, label1 0, label2 0, label3 2*1/(2+0+1) = 2/3
    assert mlc.macro_f1(predicted, TARGETS) == pytest.approx((1 + 2 / 3) / 4)
    assert mlc.hamming_loss(predicted, TARGETS) == pytest.approx(3 / 8)
    values = mlc.all_metrics(SCORES, TARGETS, 0.65)
    assert set(values) == {"p@1", "p@3", "p@5", "ndcg@3", "ndcg@5", "micro_f1", "macro_f1", "hamming"}


def test_best_threshold_maximises_micro_f1():
    threshold, score = mlc.best_threshold(SCORES, TARGETS, grid=[0.05, 0.65, 0.75, 0.85])
    # 0.05: tp 3, fp 5 -> 6/11; 0.65: 4/7; 0.75: tp 1, fp 1, fn 2 -> 2/5; 0.85: tp 1, fn 2 -> 1/2
    assert threshold == 0.65
    assert score == pytest.approx(4 / 7)


def test_top_k_ties_and_shapes():
    assert mlc.top_k(np.array([[0.5, 0.5, 0.9]]), 2).tolist() == [[2, 0]]
    with pytest.raises(ValueError, match="must both be"):
        mlc.precision_at_k(SCORES, TARGETS[:, :2], 1)


def test_per_label_report():
    rows = mlc.per_label_report(SCORES, TARGETS, 0.65, ["a", "b", "c", "d"], [5, 4, 3, 2])
    assert rows[3] == {
        "label": "d",
        "train_count": 2,
        "support": 2,
        "predicted": 1,
        "threshold": 0.65,
        "precision": 1.0,
        "recall": 0.5,
        "f1": 2 / 3,
    }


def test_per_label_thresholds_maximise_each_labels_f1_and_fall_back():
    rng = np.random.default_rng(0)
    targets = np.zeros((40, 3), dtype=np.int8)
    targets[:20, 0] = 1
    targets[:2, 1] = 1  # two positives: enough support
    scores = rng.uniform(0.0, 0.3, size=(40, 3))
    scores[:20, 0] = 0.9  # label 0 separable at any threshold in (0.3, 0.9]
    scores[:2, 1] = 0.2  # label 1's positives score low: its best threshold is low
    scores[2:, 1] = rng.uniform(0.0, 0.1, size=38)
    chosen = mlc.per_label_thresholds(scores, targets, fallback=0.5, grid=[0.05, 0.15, 0.5, 0.85])
    assert chosen[0] == 0.5  # tie among perfect thresholds: the one closest to the fallback
    assert chosen[1] == 0.15
    assert chosen[2] == 0.5  # no positives: fallback
    assert mlc.macro_f1(scores >= chosen, targets) > mlc.macro_f1(scores >= 0.5, targets)
    few = mlc.per_label_thresholds(scores, targets, fallback=0.5, min_support=3, grid=[0.05, 0.15, 0.5])
    assert few[1] == 0.5
    global_threshold, per_label = mlc.choose_thresholds(scores, targets, "per_label")
    assert per_label.shape == (3,) and global_threshold in mlc.THRESHOLD_GRID
    with pytest.raises(ValueError, match="unknown value 'best'"):
        mlc.choose_thresholds(scores, targets, "best")


def test_micro_thresholds_do_not_trade_micro_f1_for_a_poor_labels_f1():
    rng = np.random.default_rng(1)
    n = 200
    targets = np.zeros((n, 3), dtype=np.int8)
    targets[:100, 0] = 1  # frequent label, scored well at 0.5
    targets[:4, 1] = 1  # poor label: its positives score like 40 negatives
    targets[100:110, 2] = 1  # miscalibrated label: separable, but all its scores are low
    scores = np.zeros((n, 3))
    scores[:, 0] = np.where(targets[:, 0] == 1, 0.8, 0.2) + rng.uniform(-0.05, 0.05, n)
    scores[:, 1] = rng.uniform(0.0, 0.1, n)
    scores[:4, 1] = 0.3
    scores[20:60, 1] = 0.3
    scores[:, 2] = np.where(targets[:, 2] == 1, 0.2, 0.01)
    grid = [0.05, 0.15, 0.25, 0.5]
    own = mlc.per_label_thresholds(scores, targets, fallback=0.5, grid=grid)
    micro = mlc.micro_f1_thresholds(scores, targets, start=0.5, grid=grid)
    assert own[1] == 0.25 and micro[1] == 0.5  # own-F1 optimum floods label 1 with false positives
    assert own[2] == micro[2] == 0.15  # both lower the miscalibrated label's cut-off
    f1 = {name: mlc.micro_f1(scores >= t, targets) for name, t in (("own", own), ("micro", micro))}
    assert f1["micro"] > f1["own"]
    assert f1["micro"] >= mlc.micro_f1(scores >= 0.5, targets)
    assert mlc.macro_f1(scores >= micro, targets) > mlc.macro_f1(scores >= 0.5, targets)

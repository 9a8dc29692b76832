"""The issue's anchors (`apps.kenet.baselines`): TF-IDF + one logistic regression per label."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apps.kenet import metrics as mlc
from apps.kenet.baselines import load_splits, multi_hot, one_vs_rest_scores, run_baseline, tfidf_features
from apps.kenet.formats import build_label_vocabulary

ROOT = Path(__file__).resolve().parents[3]


def test_per_label_scores_belong_to_their_labels():
    """Each score column is the probability of that label: ranking beats the frequency prior."""
    splits = load_splits(ROOT / "data" / "debtags", limits={"train": 1000, "val": 300, "test": 300})
    labels, _ = build_label_vocabulary(splits["train"])
    targets = {split: multi_hot(docs, labels) for split, docs in splits.items()}
    features = tfidf_features(splits, max_features=None)
    scores = one_vs_rest_scores(
        features["train"], targets["train"], {"train": features["train"], "val": features["val"]}, 10.0, 1
    )
    assert scores["val"].shape == (300, len(labels))
    never = targets["train"].sum(0) == 0
    assert (scores["val"][:, never] == 0).all()
    prior = np.tile(targets["train"].mean(0, keepdims=True), (300, 1))
    assert mlc.precision_at_k(scores["train"][:300], targets["train"][:300], 1) > 0.95  # fits train
    fitted, baseline = (mlc.ndcg_at_k(x, targets["val"], 5) for x in (scores["val"], prior))
    assert fitted > baseline + 0.1, (fitted, baseline)


def test_run_baseline_writes_its_report(tmp_path: Path):
    result = run_baseline("tfidf", ROOT / "data" / "debtags", tmp_path, max_train_docs=400)
    assert (tmp_path / "baseline_tfidf.json").is_file()
    assert set(result["test"]) >= {"p@1", "p@3", "p@5", "ndcg@3", "ndcg@5", "micro_f1", "macro_f1", "hamming"}
    assert 0.0 < result["threshold"] < 1.0 and result["test"]["p@1"] > 0.3

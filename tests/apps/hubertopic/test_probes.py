"""Utterance probes: the hashed split and k-fold cross-validation over every utterance."""

from __future__ import annotations

import numpy as np
import pytest

from apps.hubertopic import probes


def _separable(n: int = 120, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = [("a", "b", "c")[i % 3] for i in range(n)]
    centres = {"a": 0.0, "b": 4.0, "c": 8.0}
    features = np.stack([rng.normal(centres[lab], 1.0, size=6) for lab in labels])
    return [f"utt{i:04d}" for i in range(n)], features, labels


def test_folds_are_stable_balanced_and_cover_every_utterance():
    ids, _, _ = _separable()
    folds = probes.probe_folds(ids, 5)
    assert folds.shape == (len(ids),) and set(folds.tolist()) == set(range(5))
    assert np.array_equal(folds, probes.probe_folds(list(ids), 5))  # a hash of the id, not of the order
    assert np.array_equal(probes.probe_folds(ids[::-1], 5), folds[::-1])
    assert np.bincount(folds).min() >= len(ids) // 5 // 2


def test_cross_validated_probe_scores_every_fold_and_matches_per_fold_accuracies():
    ids, features, labels = _separable()
    folds = probes.probe_folds(ids, 4)
    accuracy = probes.cross_validated_probe(features, labels, folds)
    assert accuracy is not None and accuracy > 0.9
    # the pooled accuracy is the size-weighted mean of each fold's held-out accuracy
    per_fold = [
        (probes.linear_probe(features, labels, folds == k), int((folds == k).sum())) for k in range(4)
    ]
    assert accuracy == pytest.approx(sum(a * n for a, n in per_fold) / len(ids))
    # labels independent of the features: near chance, not above it by a wide margin
    shuffled = list(np.random.default_rng(1).permutation(labels))
    assert probes.cross_validated_probe(features, shuffled, folds) < 0.6


def test_probe_folds_rejects_a_single_fold():
    with pytest.raises(ValueError, match="app.module.probe_folds"):
        probes.probe_folds(["a", "b"], 1)


def test_module_rejects_bad_probe_folds():
    from apps.hubertopic.module import HuBERTopicModule

    with pytest.raises(ValueError, match="app.module.probe_folds"):
        HuBERTopicModule(model=None, optimizer=None, probe_folds=1)  # type: ignore[arg-type]

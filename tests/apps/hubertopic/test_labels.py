"""MFCC/label alignment with the model's frames, k-means units, unit documents and LDA topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from apps.hubertopic.audio import MFCC_HOP, align_labels, mfcc_features, model_frames
from apps.hubertopic.labels import Topics, UnitLabels, fit_topics, fit_units, unit_document
from apps.hubertopic.model import HuBERTopic


@pytest.mark.parametrize("samples", [400, 719, 720, 16_000, 16_001, 33_333])
def test_mfcc_gives_two_label_frames_per_model_frame(samples):
    model = HuBERTopic(
        num_classes=8,
        conv_channels=8,
        embed_dim=16,
        num_layers=1,
        num_heads=2,
        ff_dim=16,
        pos_conv_kernel=4,
        pos_conv_groups=2,
        final_dim=8,
    )
    with torch.no_grad():
        frames = model.extract_features(torch.randn(1, samples))[0][-1].shape[1]
    assert frames == model_frames(samples)
    mfcc = mfcc_features(torch.randn(samples) * 0.1)
    assert mfcc.shape == (1 + samples // MFCC_HOP, 39)
    labels = np.arange(len(mfcc))
    aligned = align_labels(labels, samples, MFCC_HOP)
    assert len(aligned) == frames and np.array_equal(aligned, 2 * np.arange(frames))


def test_align_labels_rejects_short_streams():
    with pytest.raises(ValueError, match="cannot cover"):
        align_labels(np.zeros(10), 16_000, MFCC_HOP)
    assert len(align_labels(np.zeros(49), 16_000, 320)) == 49


def test_unit_document_collapses_repeats_and_adds_ngrams():
    assert unit_document(np.array([5, 5, 5, 9, 9, 2])) == ["5", "9", "2"]
    assert unit_document(np.array([5, 5, 9, 2]), ngram=2) == ["5", "9", "2", "5_9", "9_2"]
    assert unit_document(np.array([], dtype=int)) == []


def test_kmeans_units_and_topics_recover_two_groups(tmp_path: Path):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, (6, 4))
    features, group = {}, {}
    for n in range(24):
        g = n % 2
        idx = rng.integers(0, 3, 60) + 3 * g  # group 0 uses centers 0-2, group 1 centers 3-5
        features[f"u{n:02d}"] = centers[idx] + rng.normal(0, 0.1, (60, 4))
        group[f"u{n:02d}"] = g
    units = fit_units(features, 6, seed=0)
    assert all(len(units[u]) == 60 for u in features)
    stored = UnitLabels(units, 160, 6)
    stored.save(tmp_path / "units.npz")
    loaded = UnitLabels.load(tmp_path / "units.npz")
    assert loaded.hop == 160 and all(np.array_equal(loaded.labels[u], units[u]) for u in units)
    topics = fit_topics(units, 2, seed=0, max_iter=30)
    assert topics.theta.shape == (24, 2) and np.allclose(topics.theta.sum(axis=1), 1)
    nmi = normalized_mutual_info_score([group[u] for u in topics.utt_ids], topics.hard)
    assert nmi > 0.9
    topics.save(tmp_path / "topics.npz")
    back = Topics.load(tmp_path / "topics.npz")
    assert back.utt_ids == topics.utt_ids and np.allclose(back.theta, topics.theta, atol=1e-6)

"""MFCC/label alignment with the model's frames, k-means units, unit documents and LDA topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from apps.hubertopic.audio import MFCC_HOP, align_labels, mfcc_features, model_frames
from apps.hubertopic.labels import Topics, UnitLabels, fit_topics, fit_units, speaker_residual, unit_document
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


def test_speaker_residual_removes_each_speakers_usual_units():
    from scipy import sparse

    # speaker a always uses unit 0 (its voice) and says unit 2 or 3 (the content); b likewise with unit 1
    counts = np.array(
        [[6, 0, 2, 0], [6, 0, 0, 2], [6, 0, 2, 0], [0, 6, 0, 2], [0, 6, 2, 0], [0, 6, 0, 2], [1, 1, 1, 1]],
        dtype=float,
    )
    speakers = ["a", "a", "a", "b", "b", "b", "c"]
    residual = np.asarray(speaker_residual(sparse.csr_matrix(counts), speakers).todense())
    assert np.allclose(residual[:6, :2], 0)  # the voice units are gone
    # content: a's first utterance says unit 2, which its other utterances say half the time
    assert residual[0, 2] > 0 and residual[0, 3] == 0 and residual[1, 3] > 0
    assert np.allclose(residual[6], counts[6])  # a speaker with one utterance keeps its counts
    assert (residual >= 0).all()


def test_residual_topics_follow_content_not_speaker():
    rng = np.random.default_rng(0)
    units, speaker, content = {}, {}, {}
    for n in range(48):
        spk, topic = n % 4, (n // 4) % 2
        voice = np.repeat(np.arange(4) + 4 * spk, 15)  # each speaker's own 4 units dominate
        said = rng.integers(0, 3, 36) + 16 + 3 * topic  # content units 16-18 or 19-21
        seq = np.concatenate([voice, said])
        units[f"u{n:02d}"] = rng.permutation(seq)
        speaker[f"u{n:02d}"], content[f"u{n:02d}"] = f"s{spk}", topic
    plain = fit_topics(units, 2, seed=0, max_iter=50)
    residual = fit_topics(units, 2, seed=0, max_iter=50, documents="speaker_residual", speakers=speaker)
    truth = [content[u] for u in residual.utt_ids]
    assert normalized_mutual_info_score(truth, residual.hard) > 0.8
    assert (
        normalized_mutual_info_score(truth, residual.hard)
        > normalized_mutual_info_score(truth, plain.hard) + 0.3
    )
    with pytest.raises(ValueError, match="needs every utterance's speaker"):
        fit_topics(units, 2, documents="speaker_residual", speakers={"u00": "s0"})
    with pytest.raises(ValueError, match="topics.documents"):
        fit_topics(units, 2, documents="words")

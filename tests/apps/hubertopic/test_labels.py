"""MFCC/label alignment with the model's frames, k-means units, unit documents and LDA topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from apps.hubertopic.audio import MFCC_HOP, align_labels, mfcc_features, model_frames
from apps.hubertopic.labels import (
    Topics,
    UnitLabels,
    fit_segment_units,
    fit_topics,
    fit_units,
    segment_windows,
    speaker_normalise,
    speaker_residual,
    unit_document,
)
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


def test_segment_windows_pool_in_time_and_skip_short_utterances():
    frames = np.arange(24, dtype=np.float32).reshape(12, 2)
    windows = segment_windows(frames, length=4, hop=2, pool=2)
    assert windows.shape == (5, 4)  # (12 - 4) // 2 + 1 windows of 2 pooled steps × 2 dims
    assert np.allclose(windows[0], np.r_[frames[0:2].mean(0), frames[2:4].mean(0)])
    assert np.allclose(windows[4], np.r_[frames[8:10].mean(0), frames[10:12].mean(0)])
    assert segment_windows(frames[:3], length=4, hop=2, pool=2).shape == (0, 4)
    with pytest.raises(ValueError, match="topics.segments"):
        segment_windows(frames, length=5, hop=2, pool=2)


def test_speaker_normalise_per_speaker_and_alone_without_one():
    rng = np.random.default_rng(0)
    features = {
        "a1": rng.normal(5, 3, (30, 2)),
        "a2": rng.normal(5, 3, (20, 2)),
        "b1": rng.normal(-2, 0.5, (25, 2)),
        "x": rng.normal(9, 2, (10, 2)),
    }
    out = speaker_normalise(features, {"a1": "a", "a2": "a", "b1": "b"})
    a = np.concatenate([out["a1"], out["a2"]])
    for group in (a, out["b1"], out["x"]):
        assert np.allclose(group.mean(0), 0, atol=1e-5) and np.allclose(group.std(0), 1, atol=1e-3)
    # the two utterances of speaker a share one transform: their difference is kept
    assert out["a1"].mean() != pytest.approx(out["a2"].mean(), abs=1e-6)


def _spoken_corpus(seed: int = 0):
    """4 voices × 12 utterances; each utterance says 10 words of its topic. Every word is the four
    frame prototypes, 3 frames each, in a word-specific order, so every utterance has the same
    frame histogram: only the order of frames, across ~100 ms, tells the topics apart."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0, 1, (4, 6))
    words = {0: [(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1)], 1: [(3, 2, 1, 0), (0, 2, 1, 3), (1, 3, 0, 2)]}
    features, speakers, topic = {}, {}, {}
    for spk in range(4):
        scale, offset = rng.uniform(0.5, 2.0, 6), rng.normal(0, 3, 6)  # the voice
        for n in range(12):
            utt, label = f"s{spk}-{n:02d}", n % 2
            said = [words[label][i] for i in rng.integers(0, 3, 10)]
            frames = np.concatenate([np.repeat(prototypes[list(w)], 3, axis=0) for w in said])
            features[utt] = (frames + rng.normal(0, 0.1, frames.shape)) * scale + offset
            speakers[utt], topic[utt] = f"s{spk}", label
    return features, speakers, topic


def test_segment_units_let_topics_follow_what_is_said_where_frame_units_cannot():
    features, speakers, topic = _spoken_corpus()
    segments = fit_segment_units(features, 24, length=12, hop=3, pool=3, speakers=speakers, seed=0)
    assert {u: len(s) for u, s in segments.items()} == {u: (120 - 12) // 3 + 1 for u in features}
    by_segments = fit_topics(
        segments, 2, seed=0, documents="speaker_residual", speakers=speakers, collapse=False
    )
    frames = fit_units(features, 8, seed=0)
    by_frames = fit_topics(frames, 2, seed=0, documents="speaker_residual", speakers=speakers)
    truth = [topic[u] for u in by_segments.utt_ids]
    assert normalized_mutual_info_score(truth, by_segments.hard) > 0.8
    assert normalized_mutual_info_score(truth, by_frames.hard) < 0.3
    with pytest.raises(ValueError, match="segments.num_classes=5000"):
        fit_segment_units(features, 5000, length=12, hop=3, pool=3, speakers=speakers)


def test_unit_document_keeps_repeats_when_asked():
    assert unit_document(np.array([5, 5, 9]), collapse=False) == ["5", "5", "9"]
    assert unit_document(np.array([5, 5, 9])) == ["5", "9"]

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


def test_weighted_probe_on_one_layer_is_the_linear_probe():
    ids, features, labels = _separable(seed=3)
    features = features + np.random.default_rng(4).normal(0.0, 3.0, size=features.shape)  # not separable
    is_test = probes.probe_split(ids)
    accuracy, weights = probes.weighted_linear_probe(features[:, None], labels, is_test)
    assert weights.tolist() == [1.0]
    # the same objective as scikit-learn's C = 1 logistic regression: the same decisions up to a few
    assert accuracy == pytest.approx(probes.linear_probe(features, labels, is_test), abs=2 / is_test.sum())


def test_weighted_probe_finds_the_informative_layer_among_noise():
    ids, features, labels = _separable(seed=5)
    rng = np.random.default_rng(6)
    stacked = np.stack([rng.normal(size=features.shape), features, rng.normal(size=features.shape)], axis=1)
    folds = probes.probe_folds(ids, 4)
    accuracy, weights = probes.cross_validated_weighted_probe(stacked, labels, folds)
    assert accuracy > 0.9
    assert weights.shape == (3,) and weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert weights[1] > 0.8
    # noise alone stays near chance
    noise_only = stacked[:, [0, 2]]
    assert probes.cross_validated_weighted_probe(noise_only, labels, folds)[0] < 0.6
    with pytest.raises(ValueError, match=r"\(N, L, D\)"):
        probes.weighted_linear_probe(features, labels, folds == 0)
    assert probes.weighted_linear_probe(stacked, ["a"] * len(ids), folds == 0) is None


def _spelled(n: int = 48, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Frames that spell each text: one-hot characters, each held 2 frames, a blank frame between."""
    rng = np.random.default_rng(seed)
    words = ["CAT", "DOG", "BIRD", "FISH", "COW", "HEN"]
    dim = len(probes.CHARACTERS) + 1
    frames, texts = [], []
    for _ in range(n):
        text = " ".join(rng.choice(words, size=2))
        rows = []
        for char in text:
            one_hot = np.zeros(dim, dtype=np.float32)
            one_hot[probes.encode_text(char)[0]] = 1.0
            rows += [one_hot, one_hot, np.eye(dim, dtype=np.float32)[0]]
        clean = np.stack(rows) + rng.normal(0.0, 0.05, size=(len(rows), dim)).astype(np.float32)
        frames.append(clean)
        texts.append(text)
    return frames, texts


def test_weighted_ctc_probe_reads_the_layer_that_spells_the_text():
    frames, texts = _spelled()
    rng = np.random.default_rng(1)
    is_test = np.arange(len(frames)) % 4 == 0
    layered = [np.stack([rng.normal(size=f.shape).astype(np.float32), f]) for f in frames]
    cer, weights = probes.weighted_ctc_probe(
        layered, texts, is_test, epochs=40, lr=2e-2, schedule="constant", layer_lr_scale=10.0
    )
    noise_cer = probes.ctc_probe(
        [f[0] for f in layered], texts, is_test, epochs=40, lr=2e-2, schedule="constant"
    )
    assert cer < 0.2 < noise_cer
    assert weights.shape == (2,) and weights[1] > weights[0]
    # one layer: exactly the single-layer probe
    single, one = probes.weighted_ctc_probe([f[None] for f in frames], texts, is_test, epochs=2)
    assert one.tolist() == [1.0]
    assert single == probes.ctc_probe(frames, texts, is_test, epochs=2)
    with pytest.raises(ValueError, match=r"\(L, F_i, D\)"):
        probes.weighted_ctc_probe(frames, texts, is_test)


def _recorded_rates(monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple[float, list[list[float]]]:
    import torch

    rates: list[list[float]] = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kw):
        rates.append([group["lr"] for group in self.param_groups])
        return step(self, *args, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    frames, texts = _spelled(n=40)
    is_test = np.arange(len(frames)) % 4 == 0
    result = probes.weighted_ctc_probe([np.stack([f, f]) for f in frames], texts, is_test, **kwargs)
    return result[0], rates


def test_cosine_ctc_probe_ends_at_rest_and_constant_keeps_its_rate(monkeypatch):
    # 30 training utterances: 2 batches of 16 an epoch
    cer, cosine = _recorded_rates(monkeypatch, epochs=60, lr=5e-2, schedule="cosine", layer_lr_scale=10.0)
    assert len(cosine) == 120
    assert cosine[0] == pytest.approx([5e-2, 5e-1])  # the layer weights at 10 x the head's rate
    head = [r[0] for r in cosine]
    assert all(a >= b for a, b in zip(head, head[1:])) and head[-1] < 5e-2 * 0.01
    assert head[30] == pytest.approx(5e-2 * 0.5 * (1 + np.cos(np.pi * 30 / 120)))
    assert [r[1] for r in cosine] == pytest.approx([10 * r for r in head])
    assert cer < 0.2  # the spelled layer is read
    _, constant = _recorded_rates(monkeypatch, epochs=3, lr=2e-2, schedule="constant")
    assert constant == [[2e-2, 2e-2]] * 6  # the layer weights at the head's rate by default


def test_ctc_probe_rejects_an_unknown_schedule():
    frames, texts = _spelled(n=8)
    with pytest.raises(ValueError, match="schedule"):
        probes.ctc_probe(frames, texts, np.arange(8) % 4 == 0, epochs=1, schedule="linear")
    from apps.hubertopic.module import HuBERTopicModule

    with pytest.raises(ValueError, match="app.module.ctc_schedule"):
        HuBERTopicModule(model=None, optimizer=None, ctc_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="app.module.ctc_epochs"):
        HuBERTopicModule(model=None, optimizer=None, ctc_epochs=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="app.module.ctc_layer_lr_scale"):
        HuBERTopicModule(model=None, optimizer=None, ctc_layer_lr_scale=0)  # type: ignore[arg-type]

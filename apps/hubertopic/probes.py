"""SUPERB-style probes on frozen features, and NMI between topic labels and utterance facts.

- utterance classification (speaker ID, gender, theme): a linear classifier (multinomial logistic
  regression on standardised, mean-pooled layer features) fit on the probe-train utterances and
  scored by accuracy on the probe-test utterances; or, with ``k`` folds (``probe_folds``), k-fold
  cross-validated: every utterance is scored once by the probe fit on the other folds, so the
  accuracy rests on all utterances instead of a quarter of them;
- character recognition: a linear CTC head on frame features (letters, apostrophe, space + blank),
  trained with Adam on probe-train and scored by character error rate (greedy decoding) on
  probe-test.

Both also come in SUPERB's form (Yang et al., 2021): the probe reads a learnt softmax-weighted sum
of every layer's (standardised) features instead of one layer, the weights trained with the probe
(:func:`weighted_linear_probe`, :func:`weighted_ctc_probe`), so a model is not judged by where in
its stack it keeps a fact.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

CHARACTERS = " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CTC_SCHEDULES = ("constant", "cosine")


def probe_split(utt_ids: Sequence[str], test_fraction: float = 0.25, salt: str = "probe") -> np.ndarray:
    """Boolean `(N,)`: True for probe-test utterances (a hash of the id, stable across runs)."""
    return np.array(
        [
            int(hashlib.sha256(f"{salt}:{u}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < test_fraction
            for u in utt_ids
        ]
    )


def probe_folds(utt_ids: Sequence[str], folds: int, salt: str = "probe-fold") -> np.ndarray:
    """Fold index `(N,)` in ``[0, folds)`` of each utterance (a hash of the id, stable across runs
    and models, so every model is scored on the same folds)."""
    if folds < 2:
        raise ValueError(f"app.module.probe_folds must be 0 (one hashed split) or >= 2, got {folds}")
    return np.array(
        [int(hashlib.sha256(f"{salt}:{u}".encode()).hexdigest()[:8], 16) % folds for u in utt_ids]
    )


def cross_validated_probe(
    features: np.ndarray, labels: Sequence[str], folds: np.ndarray, seed: int = 0
) -> float | None:
    """Accuracy over every utterance of :func:`linear_probe` fit on the other folds (utterances of
    a fold whose complement lacks two classes are skipped); None when no fold can be scored."""
    correct = scored = 0
    for fold in np.unique(folds):
        is_test = folds == fold
        accuracy = linear_probe(features, labels, is_test, seed=seed)
        if accuracy is None:
            continue
        correct += accuracy * int(is_test.sum())
        scored += int(is_test.sum())
    return correct / scored if scored else None


def linear_probe(
    features: np.ndarray, labels: Sequence[str], is_test: np.ndarray, seed: int = 0
) -> float | None:
    """Accuracy of a logistic-regression probe `(N, D)` → labels, trained where `~is_test`.

    None when the training part has fewer than two classes or the test part is empty.
    """
    labels = np.asarray(labels)
    train, test = ~is_test, is_test
    if test.sum() == 0 or len(set(labels[train])) < 2:
        return None
    scaler = StandardScaler().fit(features[train])
    classifier = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    classifier.fit(scaler.transform(features[train]), labels[train])
    return float((classifier.predict(scaler.transform(features[test])) == labels[test]).mean())


def _standardise_layers(features: np.ndarray, train: np.ndarray) -> torch.Tensor:
    """`(N, L, D)` standardised per layer and dimension with the `train` rows' statistics."""
    mean = features[train].mean(axis=0, keepdims=True)
    std = features[train].std(axis=0, keepdims=True) + 1e-5
    return torch.from_numpy((features - mean) / std).float()


@torch.inference_mode(False)
@torch.enable_grad()
def weighted_linear_probe(
    features: np.ndarray,
    labels: Sequence[str],
    is_test: np.ndarray,
    l2: float = 1.0,
    max_iter: int = 300,
) -> tuple[float, np.ndarray] | None:
    """Accuracy of a multinomial logistic-regression probe on a learnt softmax-weighted sum of the
    layers of `features (N, L, D)`, trained where `~is_test`, and the layer weights `(L,)`.

    The objective is :func:`linear_probe`'s (summed cross-entropy + ``l2``/2 · ‖W‖², i.e.
    scikit-learn's ``C = 1/l2``), minimised with L-BFGS jointly over W, the bias and the layer
    logits; with one layer it is that probe. None when the training part has fewer than two
    classes or the test part is empty.
    """
    labels = np.asarray(labels)
    train, test = ~is_test, is_test
    if features.ndim != 3:
        raise ValueError(f"weighted_linear_probe needs features (N, L, D), got shape {features.shape}")
    if test.sum() == 0 or len(set(labels[train])) < 2:
        return None
    classes = sorted(set(labels[train]))
    index = {c: i for i, c in enumerate(classes)}
    x = _standardise_layers(features, train)
    y = torch.tensor([index.get(c, -1) for c in labels])
    head = torch.nn.Linear(x.shape[2], len(classes))
    torch.nn.init.zeros_(head.weight)  # a convex start: the objective has one minimum in W for fixed weights
    torch.nn.init.zeros_(head.bias)
    layer_logits = torch.zeros(x.shape[1], requires_grad=True)
    params = [head.weight, head.bias, layer_logits]
    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")
    x_train, y_train = x[torch.from_numpy(train)], y[torch.from_numpy(train)]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        mixed = torch.einsum("nld,l->nd", x_train, torch.softmax(layer_logits, dim=0))
        loss = F.cross_entropy(head(mixed), y_train, reduction="sum") + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        weights = torch.softmax(layer_logits, dim=0)
        mixed = torch.einsum("nld,l->nd", x[torch.from_numpy(test)], weights)
        predicted = head(mixed).argmax(dim=-1)
        accuracy = float((predicted == y[torch.from_numpy(test)]).float().mean())
    return accuracy, weights.numpy()


def cross_validated_weighted_probe(
    features: np.ndarray, labels: Sequence[str], folds: np.ndarray
) -> tuple[float, np.ndarray] | None:
    """:func:`cross_validated_probe` of :func:`weighted_linear_probe`: the accuracy over every
    scored utterance and the layer weights averaged over the folds."""
    correct = scored = 0
    weights = []
    for fold in np.unique(folds):
        is_test = folds == fold
        result = weighted_linear_probe(features, labels, is_test)
        if result is None:
            continue
        correct += result[0] * int(is_test.sum())
        scored += int(is_test.sum())
        weights.append(result[1])
    return (correct / scored, np.mean(weights, axis=0)) if scored else None


def encode_text(text: str) -> list[int]:
    """Character ids (1-based; 0 is the CTC blank); characters outside `CHARACTERS` are dropped."""
    return [CHARACTERS.index(c) + 1 for c in text.upper() if c in CHARACTERS]


def decode_ids(ids: Sequence[int]) -> str:
    """Greedy CTC decoding of frame ids: collapse repeats, drop blanks."""
    out, previous = [], 0
    for index in ids:
        if index != previous and index != 0:
            out.append(CHARACTERS[index - 1])
        previous = index
    return "".join(out)


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def ctc_probe(
    frames: Sequence[np.ndarray],
    texts: Sequence[str],
    is_test: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    schedule: str = "cosine",
    seed: int = 0,
) -> float | None:
    """Character error rate of a linear CTC head on frozen frame features `[(F_i, D)]`.

    `schedule`: `constant` (Adam at `lr` throughout) or `cosine` (Adam's rate falls from `lr` to 0
    along a half cosine over the `epochs`, so the head ends settled rather than mid-oscillation)."""
    result = _fit_ctc(
        [f[None] for f in frames], texts, is_test, epochs=epochs, lr=lr, schedule=schedule, seed=seed
    )
    return None if result is None else result[0]


def weighted_ctc_probe(
    frames: Sequence[np.ndarray],
    texts: Sequence[str],
    is_test: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    schedule: str = "cosine",
    seed: int = 0,
    layer_lr_scale: float = 1.0,
) -> tuple[float, np.ndarray] | None:
    """SUPERB's form of :func:`ctc_probe`: the head reads a softmax-weighted sum of every layer of
    `[(L, F_i, D)]` (each layer standardised), the layer weights trained with the head at
    `layer_lr_scale` × its learning rate. Returns the character error rate and the weights `(L,)`.

    A scale well above 1 lets the weights commit to one layer within the first few dozen steps,
    before the head has learnt to read any: on the long corpus, 10 × (the old setting) and 2 × put
    almost all weight on layer 1 and read fewer characters than the last layer alone."""
    if any(f.ndim != 3 for f in frames):
        raise ValueError("weighted_ctc_probe needs frames [(L, F_i, D)]")
    return _fit_ctc(
        frames,
        texts,
        is_test,
        epochs=epochs,
        lr=lr,
        schedule=schedule,
        seed=seed,
        layer_lr_scale=layer_lr_scale,
    )


@torch.inference_mode(False)
@torch.enable_grad()
def _fit_ctc(
    frames: Sequence[np.ndarray],
    texts: Sequence[str],
    is_test: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    schedule: str = "constant",
    layer_lr_scale: float = 1.0,
) -> tuple[float, np.ndarray] | None:
    """A linear CTC head on a softmax-weighted sum of the layers of `[(L, F_i, D)]` (one layer:
    that layer), trained with Adam on the `~is_test` utterances; CER on the rest, layer weights."""
    if schedule not in CTC_SCHEDULES:
        raise ValueError(f"CTC probe schedule must be one of {CTC_SCHEDULES}, got {schedule!r}")
    train_idx = [i for i in range(len(frames)) if not is_test[i]]
    test_idx = [i for i in range(len(frames)) if is_test[i]]
    if not train_idx or not test_idx:
        return None
    generator = torch.Generator().manual_seed(seed)
    stacked = np.concatenate([frames[i] for i in train_idx], axis=1)  # (L, frames, D)
    mean, std = stacked.mean(axis=1, keepdims=True), stacked.std(axis=1, keepdims=True) + 1e-5
    feats = [torch.from_numpy((f - mean) / std).float().transpose(0, 1) for f in frames]  # (F, L, D)
    targets = [torch.tensor(encode_text(t)) for t in texts]
    with torch.random.fork_rng():  # the head's initialisation from `seed`, the global RNG untouched
        torch.manual_seed(seed)
        head = torch.nn.Linear(feats[0].shape[2], len(CHARACTERS) + 1)
    layer_logits = torch.zeros(feats[0].shape[1], requires_grad=True)
    groups: list[dict[str, Any]] = [{"params": list(head.parameters())}]
    if len(layer_logits) > 1:
        # Adam moves a parameter by about lr a step: a probe of a few hundred steps at a small rate
        # needs a larger one for the layer logits to leave uniform weights, but too large a one
        # commits them to a layer before the head can read any (see weighted_ctc_probe)
        groups.append({"params": [layer_logits], "lr": lr * layer_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=lr)
    total_steps = epochs * -(-len(train_idx) // 16)
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
        if schedule == "cosine"
        else None
    )

    def mix(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == 1:
            return x[..., 0, :]
        return torch.einsum("...ld,l->...d", x, torch.softmax(layer_logits, dim=0))

    for _ in range(epochs):
        order = torch.randperm(len(train_idx), generator=generator).tolist()
        for start in range(0, len(order), 16):
            chosen = [train_idx[k] for k in order[start : start + 16]]
            x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in chosen], batch_first=True)
            log_probs = F.log_softmax(head(mix(x)), dim=-1).transpose(0, 1)
            loss = F.ctc_loss(
                log_probs,
                torch.cat([targets[i] for i in chosen]),
                torch.tensor([len(feats[i]) for i in chosen]),
                torch.tensor([len(targets[i]) for i in chosen]),
                zero_infinity=True,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    errors = chars = 0
    with torch.no_grad():
        for i in test_idx:
            hypothesis = decode_ids(head(mix(feats[i])).argmax(dim=-1).tolist())
            reference = "".join(CHARACTERS[k - 1] for k in encode_text(texts[i]))
            errors += edit_distance(hypothesis, reference)
            chars += len(reference)
        weights = torch.softmax(layer_logits, dim=0).numpy()
    return errors / max(chars, 1), weights


def topic_nmi(topics: Sequence[int], facts: dict[str, Sequence[str]]) -> dict[str, float]:
    """Normalised mutual information between hard topic labels and each fact (speaker, ...)."""
    return {name: float(normalized_mutual_info_score(values, topics)) for name, values in facts.items()}

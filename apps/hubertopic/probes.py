"""SUPERB-style probes on frozen features, and NMI between topic labels and utterance facts.

- utterance classification (speaker ID, gender, theme): a linear classifier (multinomial logistic
  regression on standardised, mean-pooled layer features) fit on the probe-train utterances and
  scored by accuracy on the probe-test utterances; or, with ``k`` folds (``probe_folds``), k-fold
  cross-validated: every utterance is scored once by the probe fit on the other folds, so the
  accuracy rests on all utterances instead of a quarter of them;
- character recognition: a linear CTC head on frame features (letters, apostrophe, space + blank),
  trained with Adam on probe-train and scored by character error rate (greedy decoding) on
  probe-test.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

CHARACTERS = " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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


@torch.inference_mode(False)
@torch.enable_grad()
def ctc_probe(
    frames: Sequence[np.ndarray],
    texts: Sequence[str],
    is_test: np.ndarray,
    *,
    epochs: int = 30,
    lr: float = 2e-3,
    seed: int = 0,
) -> float | None:
    """Character error rate of a linear CTC head on frozen frame features `[(F_i, D)]`."""
    train_idx = [i for i in range(len(frames)) if not is_test[i]]
    test_idx = [i for i in range(len(frames)) if is_test[i]]
    if not train_idx or not test_idx:
        return None
    generator = torch.Generator().manual_seed(seed)
    stacked = np.concatenate([frames[i] for i in train_idx])
    mean, std = stacked.mean(axis=0), stacked.std(axis=0) + 1e-5
    feats = [torch.from_numpy((f - mean) / std).float() for f in frames]
    targets = [torch.tensor(encode_text(t)) for t in texts]
    with torch.random.fork_rng():  # the head's initialisation from `seed`, the global RNG untouched
        torch.manual_seed(seed)
        head = torch.nn.Linear(feats[0].shape[1], len(CHARACTERS) + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train_idx), generator=generator).tolist()
        for start in range(0, len(order), 16):
            chosen = [train_idx[k] for k in order[start : start + 16]]
            x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in chosen], batch_first=True)
            log_probs = F.log_softmax(head(x), dim=-1).transpose(0, 1)
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
    errors = chars = 0
    with torch.no_grad():
        for i in test_idx:
            hypothesis = decode_ids(head(feats[i]).argmax(dim=-1).tolist())
            reference = "".join(CHARACTERS[k - 1] for k in encode_text(texts[i]))
            errors += edit_distance(hypothesis, reference)
            chars += len(reference)
    return errors / max(chars, 1)


def topic_nmi(topics: Sequence[int], facts: dict[str, Sequence[str]]) -> dict[str, float]:
    """Normalised mutual information between hard topic labels and each fact (speaker, ...)."""
    return {name: float(normalized_mutual_info_score(values, topics)) for name, values in facts.items()}

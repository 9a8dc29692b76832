"""Pseudo-labels (k-means units) and topic labels (LDA over unit documents) per utterance.

Iteration 1 clusters MFCC + Δ + ΔΔ frames (10 ms hop) with MiniBatchKMeans (`K = 100` by default);
iteration 2 clusters the features of one transformer layer of the iteration-1 model (20 ms hop,
`K = 500`). Labels are stored at their own hop and resampled to the model's 20 ms frames by
`audio.align_labels` when a batch is built.

HuBERTopic (Maekaku et al., 2023) turns each utterance into a document whose words are its units,
with consecutive repeats collapsed (`5 5 5 9 9 2` → `5 9 2`) and optional n-grams, fits LDA with
`T` topics on these documents, and uses each utterance's topic distribution `θ_u` as a teacher:
hard targets `argmax_t θ_u,t`, or soft targets `θ_u`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import LatentDirichletAllocation
from tqdm import tqdm

from apps.common.io import atomic_write, write_json

log = logging.getLogger(__name__)


@dataclass
class UnitLabels:
    """Frame labels per utterance id, at `hop` samples per label, over `num_classes` units."""

    labels: dict[str, np.ndarray]
    hop: int
    num_classes: int

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{f"u:{k}": v.astype(np.int32) for k, v in self.labels.items()})
        data = buffer.getvalue()
        atomic_write(path, lambda handle: handle.write(data))
        write_json(path.with_suffix(".json"), {"hop": self.hop, "num_classes": self.num_classes})

    @classmethod
    def load(cls, path: Path) -> UnitLabels:
        info = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as archive:
            labels = {key[2:]: archive[key].astype(np.int64) for key in archive.files}
        return cls(labels, int(info["hop"]), int(info["num_classes"]))


def fit_units(
    features: dict[str, np.ndarray],
    num_classes: int,
    *,
    seed: int = 0,
    max_fit_frames: int = 200_000,
    batch_size: int = 10_000,
) -> dict[str, np.ndarray]:
    """MiniBatchKMeans on frames `(F_u, D)` of all utterances (a random subset of at most
    `max_fit_frames` for fitting) → the nearest centroid of every frame, per utterance."""
    stacked = np.concatenate([f for f in features.values()], axis=0).astype(np.float32)
    if len(stacked) < num_classes:
        raise ValueError(f"k-means with K={num_classes} needs at least K frames, got {len(stacked)}")
    rng = np.random.default_rng(seed)
    fit_rows = (
        stacked if len(stacked) <= max_fit_frames else stacked[rng.choice(len(stacked), max_fit_frames)]
    )
    kmeans = MiniBatchKMeans(
        n_clusters=num_classes, batch_size=batch_size, random_state=seed, n_init=3, max_iter=100
    ).fit(fit_rows)
    log.info(
        "k-means K=%d on %d frames: inertia per frame %.3f",
        num_classes,
        len(fit_rows),
        kmeans.inertia_ / len(fit_rows),
    )
    return {utt: kmeans.predict(f.astype(np.float32)).astype(np.int64) for utt, f in features.items()}


def compute_features(
    utt_ids: Sequence[str], featurize: Callable[[str], np.ndarray], desc: str
) -> dict[str, np.ndarray]:
    return {utt: featurize(utt) for utt in tqdm(utt_ids, desc=desc, unit="utt")}


def unit_document(units: np.ndarray, ngram: int = 1, collapse: bool = True) -> list[str]:
    """Words of an utterance's document: units with consecutive repeats collapsed (unless
    `collapse=False`), plus n-grams up to `ngram` (`"5_9"` for the bigram 5 → 9)."""
    units = np.asarray(units)
    if units.size == 0:
        return []
    keep = np.ones(len(units), dtype=bool)
    if collapse:
        keep[1:] = units[1:] != units[:-1]
    collapsed = [str(u) for u in units[keep]]
    words = list(collapsed)
    for n in range(2, ngram + 1):
        words += ["_".join(collapsed[i : i + n]) for i in range(len(collapsed) - n + 1)]
    return words


@dataclass
class Topics:
    """LDA topic distributions `theta (N, T)` of utterances `utt_ids` and their hard labels."""

    utt_ids: list[str]
    theta: np.ndarray
    perplexity: float

    @property
    def hard(self) -> np.ndarray:
        return self.theta.argmax(axis=1)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {utt: row for utt, row in zip(self.utt_ids, self.theta)}

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, utt_ids=np.array(self.utt_ids), theta=self.theta.astype(np.float32))
        data = buffer.getvalue()
        atomic_write(path, lambda handle: handle.write(data))
        write_json(
            path.with_suffix(".json"),
            {
                "num_topics": int(self.theta.shape[1]),
                "perplexity": self.perplexity,
                "topic_sizes": np.bincount(self.hard, minlength=self.theta.shape[1]).tolist(),
            },
        )

    @classmethod
    def load(cls, path: Path) -> Topics:
        info = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as archive:
            return cls(
                [str(u) for u in archive["utt_ids"]], archive["theta"].astype(np.float64), info["perplexity"]
            )


TOPIC_UNITS = ("labels", "segments")
"""What a topic document's words are: the pseudo-labels the model predicts (the paper), or
`segments`, clustered multi-frame windows of speaker-normalised MFCCs (`fit_segment_units`)."""


def speaker_normalise(
    features: dict[str, np.ndarray], speakers: dict[str, str] | None
) -> dict[str, np.ndarray]:
    """Mean/variance normalisation of frames `(F, D)` per speaker (all of a speaker's frames), or
    per utterance for an utterance without a speaker. Removes much of a voice's fixed timbre, so
    that what stays is closer to what was said."""
    groups: dict[str, list[str]] = {}
    for utt in features:
        speaker = (speakers or {}).get(utt) or f"\0utt:{utt}"
        groups.setdefault(speaker, []).append(utt)
    out: dict[str, np.ndarray] = {}
    for members in groups.values():
        stacked = np.concatenate([features[u] for u in members], axis=0)
        mean, std = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
        for utt in members:
            out[utt] = ((features[utt] - mean) / std).astype(np.float32)
    return out


def segment_windows(frames: np.ndarray, length: int, hop: int, pool: int) -> np.ndarray:
    """Windows of `length` frames every `hop` frames, each average-pooled over time by `pool` and
    flattened: `(n, (length // pool) · D)`; none when the utterance is shorter than `length`."""
    if length < 1 or hop < 1 or pool < 1 or length % pool:
        raise ValueError(
            f"app.data.topics.segments: frames ({length}), hop ({hop}) and pool ({pool}) must be "
            "positive, and frames a multiple of pool"
        )
    frames = np.asarray(frames, dtype=np.float32)
    count = (len(frames) - length) // hop + 1
    if count <= 0:
        return np.zeros((0, (length // pool) * frames.shape[1]), dtype=np.float32)
    index = np.arange(length)[None, :] + hop * np.arange(count)[:, None]
    windows = frames[index].reshape(count, length // pool, pool, frames.shape[1]).mean(axis=2)
    return windows.reshape(count, -1)


def fit_segment_units(
    features: dict[str, np.ndarray],
    num_classes: int,
    *,
    length: int,
    hop: int,
    pool: int,
    speakers: dict[str, str] | None = None,
    seed: int = 0,
    max_fit_windows: int = 100_000,
) -> dict[str, np.ndarray]:
    """Acoustic "words" for the topic model: k-means over windows of `length` frames (about a
    syllable or a short word at 10 ms frames) of speaker-normalised features.

    A single 10 ms MFCC unit says mostly who speaks (which units a voice's timbre falls into), and
    n-grams of such units are too sparse to repeat across speakers; a pooled window of a few hundred
    milliseconds, clustered after speaker normalisation, recurs wherever the same stretch of speech is
    said, whoever says it. Returns one window label sequence per utterance (hop `hop` frames).
    """
    normalised = speaker_normalise(features, speakers)
    windows = {utt: segment_windows(f, length, hop, pool) for utt, f in normalised.items()}
    stacked = np.concatenate(list(windows.values()), axis=0)
    if len(stacked) < num_classes:
        raise ValueError(
            f"app.data.topics.segments.num_classes={num_classes} needs at least that many windows of "
            f"{length} frames; the corpus has {len(stacked)}"
        )
    rng = np.random.default_rng(seed)
    fit_rows = (
        stacked
        if len(stacked) <= max_fit_windows
        else stacked[rng.choice(len(stacked), max_fit_windows, replace=False)]
    )
    kmeans = MiniBatchKMeans(
        n_clusters=num_classes, batch_size=10_000, random_state=seed, n_init=3, max_iter=100
    ).fit(fit_rows)
    log.info(
        "segment k-means K=%d on %d windows of %d frames (pool %d, hop %d)",
        num_classes,
        len(fit_rows),
        length,
        pool,
        hop,
    )
    return {
        utt: (kmeans.predict(w) if len(w) else np.zeros(0)).astype(np.int64) for utt, w in windows.items()
    }


TOPIC_DOCUMENTS = ("counts", "speaker_residual")
ORACLE_FIELDS = ("speaker", "gender", "theme")
"""Corpus metadata that `metadata_topics` can turn into topic labels (a diagnostic, not the method)."""


def metadata_topics(values: dict[str, str], field: str, num_topics: int) -> Topics:
    """One-hot "topics" from a metadata field of every utterance (`values`: utterance id -> value).

    An upper-bound diagnostic for the topic loss: what HuBERTopic would learn if its topic labels
    were exactly the speaker, gender or theme. Topics are the sorted distinct values; `num_topics`
    must equal their number (the topic head is sized from it before the labels are built).
    """
    missing = sorted(u for u, v in values.items() if not v)
    if missing:
        raise ValueError(
            f"app.data.topics.oracle={field}: {len(missing)} utterance(s) have no {field!r} in the "
            f"corpus metadata, e.g. {missing[0]}"
        )
    names = sorted(set(values.values()))
    if len(names) != num_topics:
        raise ValueError(
            f"app.data.topics.oracle={field}: the corpus has {len(names)} distinct {field} values, "
            f"so app.data.topics.num_topics must be {len(names)} (got {num_topics})"
        )
    utt_ids = sorted(values)
    index = {name: i for i, name in enumerate(names)}
    theta = np.zeros((len(utt_ids), len(names)))
    theta[np.arange(len(utt_ids)), [index[values[u]] for u in utt_ids]] = 1.0
    log.info("oracle topics from %s: %d utterances, %d values", field, len(utt_ids), len(names))
    return Topics(utt_ids, theta, float("nan"))


def speaker_residual(counts: sparse.csr_matrix, speakers: Sequence[str]) -> sparse.csr_matrix:
    """Unit counts `(N, V)` minus what each utterance's speaker usually says.

    Each row is turned into relative frequencies; the speaker's profile is the mean of those over
    the speaker's *other* utterances (leave-one-out, so an utterance is not compared with itself);
    the document keeps only the words it uses more than that profile, `max(0, f - profile)`, scaled
    back by its length. With acoustic units, much of a document is the voice (which units a
    speaker's timbre and pitch fall into): removing the speaker's own profile leaves what differs
    between that speaker's utterances, i.e. what was said. A speaker with a single utterance keeps
    its counts unchanged.
    """
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    lengths = np.asarray(counts.sum(axis=1)).ravel()
    freq = sparse.diags(1.0 / np.maximum(lengths, 1.0)) @ counts  # (N, V), sparse
    names = {name: i for i, name in enumerate(sorted(set(speakers)))}
    index = np.array([names[s] for s in speakers])
    by_speaker = sparse.csr_matrix(
        (np.ones(len(index)), (index, np.arange(len(index)))), shape=(len(names), len(index))
    )
    totals = np.asarray((by_speaker @ freq).todense())  # (speakers, V): small
    sizes = np.bincount(index, minlength=len(names))
    # only a unit the utterance uses can be above its speaker's profile: the result keeps freq's support
    coo = freq.tocoo()
    n_other = sizes[index[coo.row]] - 1
    profile = np.where(
        n_other > 0, (totals[index[coo.row], coo.col] - coo.data) / np.maximum(n_other, 1), 0.0
    )
    values = np.clip(coo.data - profile, 0.0, None) * lengths[coo.row]
    residual = sparse.csr_matrix((values, (coo.row, coo.col)), shape=counts.shape)
    residual.eliminate_zeros()
    return residual


def fit_topics(
    units: dict[str, np.ndarray],
    num_topics: int,
    *,
    ngram: int = 1,
    min_count: int = 1,
    seed: int = 0,
    max_iter: int = 50,
    documents: str = "counts",
    speakers: dict[str, str] | None = None,
    collapse: bool = True,
) -> Topics:
    """LDA with `num_topics` topics over the unit documents of all utterances.

    `documents`: `counts` (each utterance's unit counts) or `speaker_residual` (those counts minus
    the speaker's usual profile, `speaker_residual`; needs `speakers`, utterance id -> speaker).
    `collapse`: merge consecutive repeats of a unit (the paper's documents); overlapping windows
    (`fit_segment_units`) are counted each, their hop being the document's time step.
    """
    if documents not in TOPIC_DOCUMENTS:
        raise ValueError(f"app.data.topics.documents: expected one of {TOPIC_DOCUMENTS}, got {documents!r}")
    utt_ids = sorted(units)
    if documents == "speaker_residual":
        missing = [u for u in utt_ids if not (speakers or {}).get(u)]
        if missing:
            raise ValueError(
                "app.data.topics.documents=speaker_residual needs every utterance's speaker; none for "
                f"{len(missing)} utterance(s), e.g. {missing[0]} (a LibriSpeech-layout corpus gives it)"
            )
    texts = [unit_document(units[u], ngram, collapse) for u in utt_ids]
    counts: dict[str, int] = {}
    for words in texts:
        for word in words:
            counts[word] = counts.get(word, 0) + 1
    vocabulary = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}
    rows, cols = [], []
    for row, words in enumerate(texts):
        for word in words:
            if word in vocabulary:
                rows.append(row)
                cols.append(vocabulary[word])
    matrix = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(texts), len(vocabulary))
    )
    matrix.sum_duplicates()
    if documents == "speaker_residual":
        matrix = speaker_residual(matrix, [speakers[u] for u in utt_ids])  # type: ignore[index]
    lda = LatentDirichletAllocation(
        n_components=num_topics, learning_method="batch", max_iter=max_iter, random_state=seed
    )
    theta = lda.fit_transform(matrix)
    # float32, as stored: a run that computes the topics and one that loads them see the same values
    theta = (theta / theta.sum(axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    perplexity = float(lda.perplexity(matrix))
    log.info(
        "LDA (%s): %d documents, %d words, %d topics, perplexity %.1f",
        documents,
        len(texts),
        len(vocabulary),
        num_topics,
        perplexity,
    )
    return Topics(utt_ids, theta, perplexity)

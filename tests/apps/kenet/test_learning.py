"""KeNet learns: the data module on a tiny debtags subset (real files, WordNet, cached states) and a
few optimiser steps that fit it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.kenet import metrics as mlc
from apps.kenet.data import KeNetDataModule
from apps.kenet.knowledge import WordNetRetriever
from apps.kenet.model import KeNet

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def datamodule(tiny_encoder: str, tmp_path_factory) -> KeNetDataModule:
    dm = KeNetDataModule(
        data_dir=str(ROOT / "data" / "debtags"),
        cache_dir=str(tmp_path_factory.mktemp("kenet_cache")),
        max_train_docs=32,
        max_val_docs=16,
        max_test_docs=16,
        encoder_path=tiny_encoder,
        max_doc_tokens=48,
        max_knowledge_tokens=16,
        knowledge=WordNetRetriever(max_entries=4),
        batch_size=32,
    )
    dm.setup("fit")
    return dm


def test_datamodule_batches(datamodule: KeNetDataModule):
    batch = next(iter(datamodule.train_dataloader()))
    b, length = batch["doc_ids"].shape
    assert b == 32 and length <= 48
    assert batch["know_index"].shape == (32, 4) and batch["know_ids"].shape[1] <= 16
    distinct = batch["know_index"][batch["know_index"] >= 0].unique()
    assert batch["know_ids"].shape[0] == len(distinct)  # each retrieved text once per batch
    assert batch["doc_states"].shape == (32, length, 32)
    assert batch["know_states"].shape == (*batch["know_ids"].shape, 32)
    assert batch["targets"].shape == (32, len(datamodule.labels))
    assert (batch["targets"].sum(1) >= 1).all()
    # padded positions carry no state; real ones do
    assert batch["doc_states"][~batch["doc_mask"]].abs().max() == 0
    assert batch["doc_states"][batch["doc_mask"]].abs().sum(-1).min() > 0
    assert len(list(Path(datamodule.cache_dir).glob("states_*.npz"))) == 4  # knowledge + three splits


def test_second_datamodule_reads_the_caches(datamodule: KeNetDataModule):
    again = KeNetDataModule(
        data_dir=str(datamodule.data_dir),
        cache_dir=str(datamodule.cache_dir),
        max_train_docs=32,
        max_val_docs=16,
        max_test_docs=16,
        encoder_path=datamodule.encoder_path,
        max_doc_tokens=48,
        max_knowledge_tokens=16,
        knowledge=WordNetRetriever(max_entries=4),
    )
    again.setup("fit")
    np.testing.assert_array_equal(
        again.datasets["train"].doc_states.states, datamodule.datasets["train"].doc_states.states
    )
    assert again.labels == datamodule.labels


def test_corrupt_corpus_is_refused(tmp_path: Path):
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.jsonl.gz").write_bytes((ROOT / "data" / "debtags" / "val.jsonl.gz").read_bytes())
    (tmp_path / "SHA256SUMS").write_text((ROOT / "data" / "debtags" / "SHA256SUMS").read_text())
    with pytest.raises(ValueError, match="train.jsonl.gz: SHA-256"):
        KeNetDataModule(data_dir=str(tmp_path), cache_dir=None).setup("fit")


def test_kenet_fits_a_tiny_training_set(datamodule: KeNetDataModule, tiny_encoder: str):
    torch.manual_seed(0)
    model = KeNet(
        datamodule.labels,
        encoder_path=tiny_encoder,
        hidden_dim=32,
        num_heads=2,
        classifier_dim=32,
        dropout=0.0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = list(datamodule.train_dataloader())
    inputs = ("doc_ids", "doc_mask", "know_ids", "know_mask", "doc_states", "know_states", "know_index")

    def loss_of(batch):
        return F.binary_cross_entropy_with_logits(model(**{k: batch[k] for k in inputs}), batch["targets"])

    with torch.no_grad():
        initial = float(sum(loss_of(b) for b in batches)) / len(batches)
    model.train()
    for _ in range(100):
        for batch in batches:
            optimizer.zero_grad()
            loss_of(batch).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        final = float(sum(loss_of(b) for b in batches)) / len(batches)
        scores = np.concatenate([torch.sigmoid(model(**{k: b[k] for k in inputs})).numpy() for b in batches])
    targets = np.concatenate([b["targets"].numpy() for b in batches])
    prior = np.tile(targets.mean(0, keepdims=True), (len(targets), 1))  # label-frequency ranking
    fitted, baseline = mlc.precision_at_k(scores, targets, 3), mlc.precision_at_k(prior, targets, 3)
    assert final < 0.5 * initial, (initial, final)
    assert fitted > baseline + 0.15, (fitted, baseline)

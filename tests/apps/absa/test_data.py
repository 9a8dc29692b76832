"""ABSA data module: tokens and aspect spans, validation split by sentence, vocabulary, erasure,
collate masks, word vectors, and a learning check (a small TNet-ATT learns the generated set)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apps.absa.data import (
    MASK_ID,
    ABSADataModule,
    AspectDataset,
    Vocabulary,
    aspect_token_span,
    collate,
    encode_examples,
    load_word_vectors,
    split_by_sentence,
    tokenize,
)
from apps.absa.formats import AspectExample


def _example(text: str, term: str, polarity: str = "positive", sid: str = "s1", opinion: str | None = None):
    start = text.index(term)
    return AspectExample(sid, text, term, start, start + len(term), polarity, opinion)


def test_tokenize_and_aspect_span():
    example = _example("The battery-life wasn't great, sadly.", "battery-life")
    spans = tokenize(example.text)
    assert [t for t, _, _ in spans] == ["the", "battery", "-", "life", "wasn't", "great", ",", "sadly", "."]
    assert aspect_token_span(example, spans) == (1, 4)
    bad = AspectExample("s9", "good food", "x", 20, 21, "positive")
    with pytest.raises(ValueError, match="s9"):
        aspect_token_span(bad, tokenize(bad.text))


def test_long_sentences_keep_the_aspect_inside_the_window():
    text = " ".join(f"w{i}" for i in range(100)) + " screen " + " ".join(f"v{i}" for i in range(100))
    (encoded,), _ = encode_examples([_example(text, "screen")], None, max_length=20)
    assert len(encoded.words) == 20 and encoded.words[encoded.aspect_start] == "screen"


def test_split_by_sentence_keeps_aspects_together_and_is_seeded():
    examples = [
        _example(f"a{i} food and service", t, sid=f"s{i}") for i in range(40) for t in ("food", "service")
    ]
    train, val = split_by_sentence(examples, 0.25, seed=3)
    assert len(val) == 20 and not {e.sentence_id for e in train} & {e.sentence_id for e in val}
    assert split_by_sentence(examples, 0.25, seed=3)[1] == val
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_sentence(examples, 1.5, seed=0)


def test_vocabulary_erasure_and_collate():
    vocab = Vocabulary.build([["good", "food"], ["bad", "food"]])
    assert vocab.words[:3] == ["<pad>", "<unk>", "<mask>"] and vocab.encode(["food", "zzz"]) == [3, 1]
    with pytest.raises(ValueError, match="start with"):
        Vocabulary(["food"])
    encoded, _ = encode_examples(
        [_example("good food here", "food"), _example("bad food", "food", "negative")], vocab
    )
    encoded[0].erased, encoded[0].active = {0}, {0}
    encoded[1].misleading = {0}
    plain, erased = AspectDataset(encoded), AspectDataset(encoded, use_erasure=True)
    assert plain[0]["tokens"][0] != MASK_ID and erased[0]["tokens"][0] == MASK_ID
    batch = collate([erased[0], erased[1]])
    assert batch["tokens"].shape == (2, 3) and batch["lengths"].tolist() == [3, 2]
    assert batch["active"][0].tolist() == [True, False, False] and batch["misleading"][1, 0]
    assert batch["labels"].tolist() == [2, 0] and batch["aspect_start"].tolist() == [1, 1]


def test_word_vectors_fill_known_words_and_name_bad_lines(tmp_path: Path):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("food 1 2 3\nunused 0 0 0\n")
    weight = torch.zeros(5, 3)
    assert load_word_vectors(vectors, ["<pad>", "<unk>", "<mask>", "food", "bad"], weight) == 1
    assert weight[3].tolist() == [1, 2, 3] and weight[4].abs().sum() == 0
    vectors.write_text("food 1 2\n")
    with pytest.raises(ValueError, match=r"glove.txt:1"):
        load_word_vectors(vectors, ["<pad>", "<unk>", "<mask>", "food"], weight)
    with pytest.raises(FileNotFoundError, match="word_vectors"):
        load_word_vectors(tmp_path / "none.txt", ["<pad>", "<unk>", "<mask>"], weight)


def test_datamodule_generates_splits_and_buckets(tmp_path: Path):
    dm = ABSADataModule(str(tmp_path / "gen"), generator={"n_train": 300, "n_test": 100}, seed=1)
    overrides = dm.model_overrides()
    assert overrides["vocab"][:3] == ["<pad>", "<unk>", "<mask>"]
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 300 and len(dm.splits["test"]) == 100
    buckets = {e.opinion_bucket for e in dm.splits["test"]}
    assert buckets <= {"unseen", "rare", "medium", "frequent", "no_opinion"} and len(buckets) >= 2
    # evaluation with a trained model's vocabulary
    other = ABSADataModule(str(tmp_path / "gen"), generator={"n_train": 300, "n_test": 100}, seed=1)
    other.use_model_config({"vocab": overrides["vocab"][:10]})
    other.setup("test")
    assert max(max(e.tokens) for e in other.splits["test"]) < 10
    with pytest.raises(ValueError, match="test_file"):
        ABSADataModule(str(tmp_path), train_file=str(tmp_path / "gen" / "train.xml")).setup()


def test_tnet_att_learns_the_generated_set(tmp_path: Path):
    from apps.absa.model import TNetATT

    torch.manual_seed(0)
    dm = ABSADataModule(
        str(tmp_path / "gen"), generator={"n_train": 1500, "n_test": 300}, batch_size=32, seed=0
    )
    model = TNetATT(dm.model_overrides()["vocab"], embed_dim=32, hidden_dim=16, dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def accuracy() -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for batch in dm.val_dataloader():
                logits, _, _ = model(
                    batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
                )
                correct += int((logits.argmax(1) == batch["labels"]).sum())
                total += len(batch["labels"])
        return correct / total

    labels = torch.tensor([e.label for e in dm.splits["val"]])
    majority = float(torch.bincount(labels).max()) / len(labels)
    for _ in range(4):
        model.train()
        for batch in dm.train_dataloader():
            logits, _, _ = model(
                batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
            )
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert accuracy() > majority + 0.25


def test_encoder_word_vectors_from_a_local_encoder(tiny_encoder):
    from apps.absa.data import encoder_word_vectors

    vocab = ["<pad>", "<unk>", "<mask>", "scrumptious", "pasta"]
    weight = torch.zeros(5, 32)
    assert encoder_word_vectors(tiny_encoder, vocab, weight) == 2
    assert weight[:3].abs().sum() == 0 and (weight[3:].norm(dim=1) > 0).all()
    assert not torch.allclose(weight[3], weight[4])
    with pytest.raises(ValueError, match="embed_dim=32"):
        encoder_word_vectors(tiny_encoder, vocab, torch.zeros(5, 8))

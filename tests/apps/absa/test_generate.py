"""The generated default ABSA dataset: exact labels, the frequency shape PSSA needs, caching."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict

import pytest

from apps.absa import generate as gen
from apps.absa.formats import POLARITIES, read_semeval_xml
from apps.absa.generate import GeneratorConfig, build_dataset, generate

TOKEN = re.compile(r"^(?:[a-z]+(?:-[a-z]+)*|[.,!])$")
SMALL = GeneratorConfig(n_train=300, n_test=120, seed=3)


@pytest.fixture(scope="module")
def default_data():
    began = time.perf_counter()
    train, test, metadata = generate(GeneratorConfig())
    return train, test, metadata, time.perf_counter() - began


def lexicon_polarity(metadata) -> dict[str, str]:
    return {word: entry["polarity"] for word, entry in metadata["lexicon"].items()}


def by_sentence(examples) -> dict[str, list]:
    groups = defaultdict(list)
    for e in examples:
        groups[e.sentence_id].append(e)
    return groups


def test_default_generation_is_fast_and_sized(default_data):
    train, test, metadata, seconds = default_data
    assert seconds < 5.0
    assert len(train) == 6000 and len(test) == 2000
    assert metadata["counts"]["train"]["examples"] == 6000
    assert json.loads(json.dumps(metadata)) == metadata  # JSON-ready as returned


def test_deterministic_for_a_seed():
    assert generate(SMALL)[:2] == generate(SMALL)[:2]
    other = GeneratorConfig(n_train=300, n_test=120, seed=4)
    assert generate(other)[0] != generate(SMALL)[0]


def test_offsets_tokens_labels_and_ids(default_data):
    train, test, _, _ = default_data
    for split, examples in (("train", train), ("test", test)):
        assert {e.polarity for e in examples} == set(POLARITIES)
        proportions = Counter(e.polarity for e in examples)
        assert all(0.27 < proportions[p] / len(examples) < 0.4 for p in POLARITIES)
        for sentence_id, group in by_sentence(examples).items():
            assert re.fullmatch(rf"{split}-\d{{6}}", sentence_id)
            assert len({e.text for e in group}) == 1 and len({e.start for e in group}) == len(group)
        for e in examples:
            assert e.text[e.start : e.end] == e.term
            assert e.text == e.text.lower() == " ".join(e.text.split())
            assert all(TOKEN.match(token) for token in e.text.split()), e.text
            assert (e.start == 0 or e.text[e.start - 1] == " ") and (
                e.end == len(e.text) or e.text[e.end] == " "
            )
    multi_word = {e.term for e in train if " " in e.term}
    assert {"battery life", "wait staff"} <= multi_word


def test_opinion_words_and_negation(default_data):
    train, test, metadata, _ = default_data
    polarity_of = lexicon_polarity(metadata)
    flip = {"positive": "negative", "negative": "positive"}
    for e in train + test:
        if e.polarity == "neutral":
            assert e.opinion is None and not e.negated
            continue
        tokens = e.text.split()
        assert e.opinion in tokens
        if e.negated:
            assert polarity_of[e.opinion] == flip[e.polarity]
            after = e.text[e.end :].split()  # negation only in predicative clauses: after the aspect
            at = after.index(e.opinion)
            assert set(after[max(0, at - 2) : at]) & set(gen.NEGATORS), e.text
        else:
            assert polarity_of[e.opinion] == e.polarity
    negated = [e for e in train if e.negated]
    assert 0.05 < len(negated) / len(train) < 0.2
    assert {e.polarity for e in negated} == {"positive", "negative"}


def test_neutral_sentences_have_no_opinion_word(default_data):
    train, _, metadata, _ = default_data
    lexicon = set(metadata["lexicon"])
    for group in by_sentence(train).values():
        if all(e.polarity == "neutral" for e in group):
            assert not set(group[0].text.split()) & lexicon, group[0].text


def test_contrast_sentences_keep_each_clause_opinion(default_data):
    train, _, _, _ = default_data
    contrasts = [
        g
        for g in by_sentence(train).values()
        if len(g) == 2 and {g[0].polarity, g[1].polarity} == {"positive", "negative"}
    ]
    assert len(contrasts) > 300
    for first, second in contrasts:
        assert first.start < second.start
        assert f" {first.opinion} " in f" {first.text[: second.start]}"
        assert f" {second.opinion} " in f"{first.text[second.end :]} "


def test_many_rare_opinion_words(default_data):
    train, _, metadata, _ = default_data
    lexicon = set(metadata["lexicon"])
    texts = {e.sentence_id: e.text for e in train}
    counts = Counter(token for text in texts.values() for token in text.split() if token in lexicon)
    rare = [word for word in lexicon if counts[word] <= 10]
    assert len(rare) >= 0.3 * len(lexicon)
    assert sum(1 for word in lexicon if counts[word] == 0) <= 3
    top = counts.most_common(4)
    assert all(count > 250 for _, count in top)  # a handful dominate
    assert {word: counts[word] for word in lexicon} == {
        w: e["train_count"] for w, e in metadata["lexicon"].items()
    }
    weights = Counter()
    for entry in metadata["lexicon"].values():
        weights[entry["polarity"]] += entry["weight"]
    assert weights["positive"] == pytest.approx(1, abs=1e-4) and weights["negative"] == pytest.approx(
        1, abs=1e-4
    )


def cooccurrence_share(examples, metadata) -> float:
    """Share of one-aspect polar sentences with two same-polarity opinion words."""
    polarity_of = lexicon_polarity(metadata)
    single = [g[0] for g in by_sentence(examples).values() if len(g) == 1 and g[0].polarity != "neutral"]
    pairs = 0
    for e in single:
        words = [t for t in e.text.split() if polarity_of.get(t) == e.polarity]
        if len(words) == 2 and not e.negated:
            pairs += 1
            frequent = [w for w in words if w != e.opinion]
            assert len(frequent) == 1 and metadata["lexicon"][frequent[0]]["frequent"], e.text
            assert metadata["lexicon"][e.opinion]["weight"] < metadata["lexicon"][frequent[0]]["weight"]
    return pairs / len(single)


def test_cooccurrence_in_train_and_rare_words_alone_in_test(default_data):
    train, test, metadata, _ = default_data
    train_share, test_share = cooccurrence_share(train, metadata), cooccurrence_share(test, metadata)
    assert train_share > 0.2 and test_share < 0.1
    rare = {w for w, e in metadata["lexicon"].items() if e["rare"]}
    test_rare = [e for e in test if e.opinion in rare]
    assert len(test_rare) > 200
    seen = {e.opinion for e in train}
    assert sum(e.opinion in seen for e in test_rare) / len(test_rare) > 0.95


def test_config_validation():
    with pytest.raises(ValueError, match="negation_prob"):
        GeneratorConfig(negation_prob=1.5)
    with pytest.raises(ValueError, match="n_train"):
        GeneratorConfig(n_train=0)
    with pytest.raises(ValueError, match="neutral_share"):
        GeneratorConfig(neutral_share=0.9, contrast_prob=0.5, pair_prob=0.0)


def test_build_dataset_writes_caches_and_regenerates(tmp_path):
    meta = build_dataset(tmp_path, SMALL)
    train, test, _ = generate(SMALL)
    assert read_semeval_xml(tmp_path / "train.xml") == train
    assert read_semeval_xml(tmp_path / "test.xml") == test
    stored = json.loads((tmp_path / "meta.json").read_text())
    assert stored == meta
    assert stored["config"]["seed"] == 3 and stored["generator_version"] == gen.GENERATOR_VERSION
    assert set(stored["sha256"]) == {"train", "test"}

    files = [tmp_path / name for name in ("train.xml", "test.xml", "meta.json")]
    stamps = [os.stat(p).st_mtime_ns for p in files]
    time.sleep(0.01)
    assert build_dataset(tmp_path, SMALL) == meta
    assert [os.stat(p).st_mtime_ns for p in files] == stamps

    original = (tmp_path / "train.xml").read_bytes()
    (tmp_path / "train.xml").write_bytes(original.replace(b"positive", b"negative", 1))
    build_dataset(tmp_path, SMALL)
    assert (tmp_path / "train.xml").read_bytes() == original

    bigger = GeneratorConfig(n_train=320, n_test=120, seed=3)
    assert build_dataset(tmp_path, bigger)["counts"]["train"]["examples"] == 320
    assert len(read_semeval_xml(tmp_path / "train.xml")) == 320

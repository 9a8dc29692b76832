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
    assert metadata["generator_version"] == gen.GENERATOR_VERSION == 2


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
    assert 0.08 < len(negated) / len(train) < 0.2
    assert {e.polarity for e in negated} == {"positive", "negative"}


def template_pattern(template: str) -> re.Pattern:
    """A regex for a clause template whose "{OP}" is captured."""
    pattern = re.escape(template)
    for piece, regex in (
        (r"\{A\}", r"(?P<a>[a-z]+(?: [a-z]+)*?)"),
        (r"\{BE\}", r"(?:is|are)"),
        (r"\{WAS\}", r"(?:was|were)"),
        (r"\{OP\}", r"(?P<op>[a-z]+)"),
    ):
        pattern = pattern.replace(piece, regex)
    return re.compile(rf"(?:^| ){pattern}(?= )")


UNLABELLED_OPINION_PATTERNS = [
    template_pattern(t)
    for t in (*gen.HYPOTHETICAL_CLAUSES, *(t for ts in gen.DISTRACTOR_CLAUSES.values() for t in ts))
]


def unlabelled_opinion_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of opinion words that decide no label (distractor clauses, neutral questions)."""
    return [m.span("op") for p in UNLABELLED_OPINION_PATTERNS for m in p.finditer(text)]


def labelled_words(text: str, lexicon) -> list[str]:
    """Lexicon words of ``text`` outside distractor clauses and neutral questions."""
    skip = {start for start, _ in unlabelled_opinion_spans(text)}
    words, at = [], 0
    for token in text.split(" "):
        if token in lexicon and at not in skip:
            words.append(token)
        at += len(token) + 1
    return words


def test_neutral_clauses_hold_opinion_words_only_in_questions_or_distractors(default_data):
    train, test, metadata, _ = default_data
    lexicon = set(metadata["lexicon"])
    questions = 0
    for examples in (train, test):
        for group in by_sentence(examples).values():
            if all(e.polarity == "neutral" for e in group):
                assert not labelled_words(group[0].text, lexicon), group[0].text
                questions += any(
                    p.search(group[0].text)
                    for p in UNLABELLED_OPINION_PATTERNS[: len(gen.HYPOTHETICAL_CLAUSES)]
                )
    assert questions > 150  # neutral examples that name an opinion word without holding it
    assert metadata["counts"]["train"]["hypothetical_clauses"] > 250
    assert metadata["counts"]["train"]["distractor_sentences"] > 400


def test_factual_clauses_look_like_opinions_but_are_neutral(default_data):
    train, test, metadata, _ = default_data
    factual = {word for words in gen.FACTUAL_PREDICATES.values() for word in words}
    modifiers = set(gen.DISH_MODIFIERS + gen.VENUE_MODIFIERS + gen.LAPTOP_MODIFIERS)
    assert not factual & set(metadata["lexicon"])
    predicative = [template_pattern(t) for t in gen.PREDICATIVE_TEMPLATES]
    for examples in (train, test):
        found = Counter()
        for e in examples:
            for match in (m for p in predicative for m in p.finditer(e.text)):
                before = e.text[match.start("a") : e.start].split()
                own = match.end("a") == e.end and (
                    not before or (len(before) == 1 and before[0] in modifiers)
                )
                if own and match.group("op") in factual:
                    assert e.polarity == "neutral" and e.opinion is None, e.text
                    found[match.group("op")] += 1
        assert sum(found.values()) > 0.1 * len(examples)
        assert len(found) > 40


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


def test_long_zipf_tail_of_opinion_words(default_data):
    train, _, metadata, _ = default_data
    lexicon = metadata["lexicon"]
    assert sum(e["polarity"] == "positive" for e in lexicon.values()) >= 150
    assert sum(e["polarity"] == "negative" for e in lexicon.values()) >= 150
    assert all(re.fullmatch(r"[a-z]+", word) for word in lexicon)
    opinions = Counter(e.opinion for e in train if e.opinion is not None)
    assert opinions == Counter(
        {w: e["train_opinion_count"] for w, e in lexicon.items() if e["train_opinion_count"]}
    )
    seen = [word for word in lexicon if opinions[word] > 0]
    assert len(seen) >= 250
    assert sum(1 for word in seen if opinions[word] <= 5) >= 0.7 * len(seen)  # most occur 1-5 times
    assert sum(1 for word in seen if opinions[word] > 100) >= 4  # a handful dominate
    assert sum(count for _, count in opinions.most_common(6)) > 0.4 * sum(opinions.values())
    texts = {e.sentence_id: e.text for e in train}
    counts = Counter(token for text in texts.values() for token in text.split() if token in lexicon)
    assert {word: counts[word] for word in lexicon} == {w: e["train_count"] for w, e in lexicon.items()}
    assert sum(1 for word in lexicon if counts[word] == 0) <= 0.3 * len(lexicon)
    weights = Counter()
    for entry in lexicon.values():
        weights[entry["polarity"]] += entry["weight"]
    assert weights["positive"] == pytest.approx(1, abs=1e-4)
    assert weights["negative"] == pytest.approx(1, abs=1e-4)
    summary = metadata["counts"]
    assert summary["train_opinion_words"] == len(seen)
    assert summary["train_opinion_words_1_to_3"] == sum(1 for word in seen if opinions[word] <= 3)


def shadowing(examples, metadata, train_opinions) -> tuple[float, float, int]:
    """Over one-aspect, non-negated polar sentences: the share with two same-polarity opinion words,
    the share of those with a rare opinion word (1 to 10 train opinions) that pair it with a
    frequent word, and how many rare-word examples there are."""
    lexicon = metadata["lexicon"]
    single = [g[0] for g in by_sentence(examples).values() if len(g) == 1 and g[0].polarity != "neutral"]
    single = [e for e in single if not e.negated]
    pairs, rare, rare_shadowed = 0, 0, 0
    for e in single:
        words = [w for w in labelled_words(e.text, lexicon) if lexicon[w]["polarity"] == e.polarity]
        assert e.opinion in words and len(words) <= 2, e.text
        partner = [w for w in words if w != e.opinion]
        if len(words) == 2:
            pairs += 1
            assert len(partner) == 1 and lexicon[partner[0]]["frequent"], e.text
            assert lexicon[e.opinion]["weight"] < lexicon[partner[0]]["weight"]
        if 1 <= train_opinions[e.opinion] <= 10:
            rare += 1
            rare_shadowed += len(words) == 2
    return pairs / len(single), rare_shadowed / max(1, rare), rare


def test_frequent_words_shadow_rare_ones_in_train_but_not_in_test(default_data):
    train, test, metadata, _ = default_data
    train_opinions = Counter(e.opinion for e in train if e.opinion is not None)
    train_pairs, train_shadowed, train_rare = shadowing(train, metadata, train_opinions)
    test_pairs, test_shadowed, test_rare = shadowing(test, metadata, train_opinions)
    assert train_pairs > 0.2 and test_pairs < 0.1
    assert train_shadowed > 0.85 and test_shadowed < 0.1
    assert train_rare > 150 and test_rare > 100
    rare_test = [e for e in test if e.opinion is not None and 1 <= train_opinions[e.opinion] <= 10]
    assert len(rare_test) >= 400  # the rare bucket of the evaluation is well populated
    assert metadata["counts"]["test"]["rare_opinion_examples"] == len(rare_test)
    assert metadata["counts"]["train"]["rare_opinion_shadowed_share"] > 0.85
    assert metadata["counts"]["test"]["rare_opinion_shadowed_share"] < 0.1


def test_aspects_carry_neutral_modifiers_outside_their_span(default_data):
    train, _, metadata, _ = default_data
    modifiers = set(gen.DISH_MODIFIERS + gen.VENUE_MODIFIERS + gen.LAPTOP_MODIFIERS)
    assert not modifiers & set(metadata["lexicon"])
    before = Counter(e.text[: e.start].split()[-1] for e in train if e.start > 0)
    used = {word for word in before if word in modifiers}
    assert len(used) > 100
    assert sum(before[word] for word in used) > 0.3 * len(train)
    assert not any(word in modifiers for e in train for word in e.term.split())


def test_context_sentences_make_reviews_with_the_same_labels():
    train, test, metadata = generate(GeneratorConfig(n_train=300, n_test=120, seed=3, context_sentences=3))
    plain_train = generate(SMALL)[0]
    for e in train + test:
        tokens = e.text.split()
        assert e.text[e.start : e.end] == e.term
        assert sum(token in {".", "!"} for token in tokens) == 4  # 3 context sentences + the aspect one
        assert tokens[-1] in {".", "!"}
    lengths = [len(e.text.split()) for e in train]
    assert sum(lengths) / len(lengths) > sum(len(e.text.split()) for e in plain_train) / len(plain_train) + 15
    assert max(lengths) <= 80  # the app's max_length
    assert all(0.25 < n / len(train) < 0.42 for n in Counter(e.polarity for e in train).values())
    assert metadata["counts"]["train"]["context_opinions"] > 0
    assert metadata["counts"]["train"]["examples"] == 300
    with pytest.raises(ValueError, match="context_sentences"):
        GeneratorConfig(context_sentences=-1)


def test_config_validation():
    with pytest.raises(ValueError, match="negation_prob"):
        GeneratorConfig(negation_prob=1.5)
    with pytest.raises(ValueError, match="n_train"):
        GeneratorConfig(n_train=0)
    with pytest.raises(ValueError, match="hypothetical_prob"):
        GeneratorConfig(hypothetical_prob=-0.1)
    with pytest.raises(ValueError, match="modifier_exponent"):
        GeneratorConfig(modifier_exponent=-1.0)
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

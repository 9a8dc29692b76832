"""Knowledge retrieval from the real WordNet 3.0 files and from a JSONL knowledge base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.kenet.knowledge import (
    JsonlKnowledgeBase,
    WordNetRetriever,
    candidate_phrases,
    retrieve_cached,
    words_of,
)

WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "index.noun").is_file(), reason="wordnet-base not installed"
)


@pytest.fixture(scope="module")
def wordnet() -> WordNetRetriever:
    return WordNetRetriever(WORDNET, max_entries=6)


def test_words_and_phrases():
    assert words_of("A C++ library, for X11 e-mail.") == ["a", "c++", "library", "for", "x11", "e-mail"]
    assert candidate_phrases(["a", "b"], 2) == [(0, "a_b"), (0, "a"), (1, "b")]


@needs_wordnet
def test_wordnet_links_phrases_first_and_returns_glosses(wordnet: WordNetRetriever):
    entries = wordnet.retrieve("A simple window manager with a clean user interface and fonts.")
    keys = [e.key for e in entries]
    assert keys[0] == "user interface"  # multi-word expressions rank first
    assert "window" in keys and "font" in keys  # "fonts" normalised by the detachment rules
    assert "a" not in keys and "with" not in keys
    assert len(keys) == len(set(keys)) <= 6
    interface = entries[0].text
    assert interface.startswith("user interface: ") and "computer" in interface


@needs_wordnet
def test_wordnet_exception_list_and_first_sense(wordnet: WordNetRetriever):
    assert wordnet.lemma("mice", "noun") == "mouse"
    assert wordnet.lemma("libraries", "noun") == "library"
    assert wordnet.lemma("qwzxv", "noun") is None
    offset = wordnet.first_sense["noun"]["python"]
    line = (WORDNET / "data.noun").read_bytes()[offset : offset + 200].decode()
    assert line.startswith(f"{offset:08d} ")
    assert wordnet.gloss("noun", offset) in line


def test_missing_wordnet_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        WordNetRetriever(tmp_path)
    with pytest.raises(ValueError, match="unknown part"):
        WordNetRetriever(WORDNET, pos=["nouns"])


def test_jsonl_knowledge_base(tmp_path: Path):
    path = tmp_path / "kb.jsonl"
    rows = [{"key": "Python", "text": "a language"}, {"key": "window manager", "text": "places windows"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kb = JsonlKnowledgeBase(path)
    entries = kb.retrieve("A window manager written in python.")
    assert [e.key for e in entries] == ["window manager", "python"]
    assert entries[1].text == "a language"
    path.write_text('{"key": "x", "text": "y"}\n{"key": 3}\n')
    with pytest.raises(ValueError, match=r"kb.jsonl:2: .*string `key`"):
        JsonlKnowledgeBase(path)


@needs_wordnet
def test_retrieval_cache_round_trip(tmp_path: Path, wordnet: WordNetRetriever):
    texts = ["a graphical user interface", "python bindings for the library"]
    first = retrieve_cached(wordnet, texts, tmp_path, "val")
    assert len(list(tmp_path.glob("knowledge_val_*.json.gz"))) == 1
    assert retrieve_cached(wordnet, texts, tmp_path, "val") == first

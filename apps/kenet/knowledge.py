"""External knowledge for KeNet: document -> knowledge texts.

KeNet (Li et al., ICASSP 2024) links entities of a document to an external knowledge base
(Wikipedia in the paper) and encodes their descriptions next to the document. Here a
`KnowledgeRetriever` maps a document to a short list of `KnowledgeEntry`s (a key and a text).
Two implementations:

- `WordNetRetriever` (default, offline): reads the WordNet 3.0 database files (`index.<pos>`,
  `data.<pos>`, `<pos>.exc`, as installed by Debian's `wordnet-base` under `/usr/share/wordnet`),
  links the document's words and multi-word expressions (up to `max_ngram` words, after WordNet's
  morphological normalisation) to their most frequent sense, and returns the sense glosses.
- `JsonlKnowledgeBase`: any local JSONL file with one `{"key": ..., "text": ...}` object per line;
  document n-grams that equal a key (case-insensitive) retrieve its text.

`retrieve_cached` stores the retrieval of a whole split in a JSON file keyed by the retriever's
signature and the texts' hash, so each split is linked once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from apps.common.io import atomic_write

log = logging.getLogger(__name__)

WORD_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+#.\-]*[A-Za-z0-9+#]|[A-Za-z]")

#: Function words that WordNet also lists as nouns ("a", "an", "it", "who", ...) or that carry no
#: topic; they are never linked.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves use used uses using provide provides provided include
    includes including package packages contains contain based support supports well many one two new
    set way etc e.g i.e via able allows allow make makes like""".split()
)

POS_FILES = {"noun": "noun", "verb": "verb", "adj": "adj", "adv": "adv"}

# WordNet's morphy detachment rules (suffix, replacement) per part of speech.
DETACHMENT_RULES = {
    "noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
             ("men", "man"), ("ies", "y")],
    "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
             ("ing", "")],
    "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "adv": [],
}  # fmt: skip


@dataclass(frozen=True)
class KnowledgeEntry:
    """One retrieved piece of knowledge: what was linked (`key`) and its description (`text`)."""

    key: str
    text: str


class KnowledgeRetriever(ABC):
    """Maps a document to at most `max_entries` knowledge entries (most relevant first)."""

    max_entries: int

    @abstractmethod
    def retrieve(self, text: str) -> list[KnowledgeEntry]:
        """Knowledge entries for one document text."""

    @abstractmethod
    def signature(self) -> str:
        """A string that changes whenever the retriever would return different entries (cache key)."""

    def retrieve_many(self, texts: Iterable[str]) -> list[list[KnowledgeEntry]]:
        return [self.retrieve(text) for text in texts]


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens of a text (keeps `c++`, `c#`, `x11`, `e-mail`)."""
    return [match.group(0).lower() for match in WORD_PATTERN.finditer(text)]


def candidate_phrases(words: Sequence[str], max_ngram: int) -> list[tuple[int, str]]:
    """`(start, phrase)` n-grams, longest first at each position, phrases joined with `_` (WordNet's form)."""
    phrases = []
    for start in range(len(words)):
        for size in range(min(max_ngram, len(words) - start), 0, -1):
            phrases.append((start, "_".join(words[start : start + size])))
    return phrases


class WordNetRetriever(KnowledgeRetriever):
    """Links document words and phrases to WordNet 3.0 senses and returns their glosses.

    Linking: scan the document left to right; at each position try the longest n-gram first
    (`max_ngram` words); a phrase is linked when WordNet lists it (after morphological
    normalisation: exception lists, then detachment rules, as WordNet's `morphy`) for one of the
    parts of speech in `pos`. The first sense in `index.<pos>` (WordNet orders senses by tagged
    frequency) gives the synset whose gloss becomes the entry. Multi-word expressions are ranked
    before single words, then by first occurrence; duplicates (same synset) are dropped.

    Args:
        wordnet_dir: folder with the WordNet database files (`index.noun`, `data.noun`, ...).
        pos: parts of speech to link (`noun`, `verb`, `adj`, `adv`).
        max_entries: entries returned per document.
        max_ngram: longest phrase tried, in words.
        min_word_length: single words shorter than this are not linked.
        include_lemma: prefix each gloss with the linked lemma (`"python: large Old World boas"`).
    """

    def __init__(
        self,
        wordnet_dir: str | Path = "/usr/share/wordnet",
        pos: Sequence[str] = ("noun",),
        max_entries: int = 8,
        max_ngram: int = 3,
        min_word_length: int = 3,
        include_lemma: bool = True,
    ) -> None:
        self.wordnet_dir = Path(wordnet_dir).expanduser()
        unknown = [p for p in pos if p not in POS_FILES]
        if unknown:
            raise ValueError(
                f"knowledge.pos: unknown part(s) of speech {unknown}; expected {list(POS_FILES)}"
            )
        if max_entries < 1 or max_ngram < 1:
            raise ValueError("knowledge.max_entries and knowledge.max_ngram must be >= 1")
        self.pos = tuple(pos)
        self.max_entries = int(max_entries)
        self.max_ngram = int(max_ngram)
        self.min_word_length = int(min_word_length)
        self.include_lemma = include_lemma
        self.first_sense: dict[str, dict[str, int]] = {}
        self.exceptions: dict[str, dict[str, str]] = {}
        self._data_handles: dict[str, object] = {}
        self._gloss_cache: dict[tuple[str, int], str] = {}
        for part in self.pos:
            self.first_sense[part] = self._read_index(part)
            self.exceptions[part] = self._read_exceptions(part)

    def _file(self, name: str) -> Path:
        path = self.wordnet_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"WordNet file not found: {path}. Install WordNet 3.0 (Debian package `wordnet-base`, "
                "done by the Makefile) or set app.data.knowledge.wordnet_dir to its database folder."
            )
        return path

    def _read_index(self, part: str) -> dict[str, int]:
        """`index.<pos>` → lemma → byte offset of its first (most frequent) synset in `data.<pos>`."""
        path = self._file(f"index.{POS_FILES[part]}")
        first: dict[str, int] = {}
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.startswith("  "):
                    continue  # licence header
                fields = line.split()
                try:
                    synset_count = int(fields[2])
                    pointer_count = int(fields[3])
                    offsets = fields[4 + pointer_count + 2 :]
                    if len(offsets) != synset_count:
                        raise ValueError(f"{len(offsets)} synset offsets for synset_cnt {synset_count}")
                    first[fields[0]] = int(offsets[0])
                except (IndexError, ValueError) as err:
                    raise ValueError(f"{path}:{line_no}: malformed WordNet index line: {err}") from err
        if not first:
            raise ValueError(f"{path}: no index entries")
        return first

    def _read_exceptions(self, part: str) -> dict[str, str]:
        path = self.wordnet_dir / f"{POS_FILES[part]}.exc"
        if not path.is_file():
            return {}
        exceptions = {}
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2:
                    exceptions.setdefault(fields[0], fields[1])
        return exceptions

    def lemma(self, phrase: str, part: str) -> str | None:
        """WordNet's base form of `phrase` for `part`, or None when WordNet does not list it (morphy)."""
        index = self.first_sense[part]
        if phrase in index:
            return phrase
        base = self.exceptions[part].get(phrase)
        if base is not None and base in index:
            return base
        for suffix, replacement in DETACHMENT_RULES[part]:
            if phrase.endswith(suffix) and len(phrase) > len(suffix):
                candidate = phrase[: len(phrase) - len(suffix)] + replacement
                if candidate in index:
                    return candidate
        return None

    def gloss(self, part: str, offset: int) -> str:
        """The gloss of the synset at byte `offset` of `data.<pos>`."""
        key = (part, offset)
        if key not in self._gloss_cache:
            handle = self._data_handles.get(part)
            if handle is None:
                handle = self._file(f"data.{POS_FILES[part]}").open("rb")
                self._data_handles[part] = handle
            handle.seek(offset)  # type: ignore[attr-defined]
            line = handle.readline().decode("utf-8", errors="replace")  # type: ignore[attr-defined]
            if not line.startswith(f"{offset:08d} ") or "|" not in line:
                raise ValueError(f"data.{POS_FILES[part]}: no synset at byte offset {offset}")
            self._gloss_cache[key] = line.split("|", 1)[1].strip()
        return self._gloss_cache[key]

    def retrieve(self, text: str) -> list[KnowledgeEntry]:
        words = words_of(text)
        phrases: list[tuple[int, int, str, int, str]] = []  # (rank group, position, lemma, offset, part)
        seen: set[tuple[str, int]] = set()
        covered_until = -1
        for start, phrase in candidate_phrases(words, self.max_ngram):
            size = phrase.count("_") + 1
            if size == 1 and (start <= covered_until or len(phrase) < self.min_word_length):
                continue
            if size == 1 and phrase in STOPWORDS:
                continue
            for part in self.pos:
                lemma = self.lemma(phrase, part)
                if lemma is None or (size == 1 and lemma in STOPWORDS):
                    continue
                offset = self.first_sense[part][lemma]
                if (part, offset) not in seen:
                    seen.add((part, offset))
                    phrases.append((0 if size > 1 else 1, start, lemma, offset, part))
                if size > 1:
                    covered_until = max(covered_until, start + size - 1)
                break
        phrases.sort(key=lambda item: (item[0], item[1]))
        entries = []
        for _, _, lemma, offset, part in phrases[: self.max_entries]:
            gloss = self.gloss(part, offset)
            name = lemma.replace("_", " ")
            entries.append(KnowledgeEntry(name, f"{name}: {gloss}" if self.include_lemma else gloss))
        return entries

    def signature(self) -> str:
        stamp = [
            f"{name}:{(self.wordnet_dir / name).stat().st_size}"
            for part in self.pos
            for name in (f"index.{POS_FILES[part]}", f"data.{POS_FILES[part]}")
        ]
        return (
            f"wordnet:{','.join(self.pos)}:k{self.max_entries}:n{self.max_ngram}:w{self.min_word_length}"
            f":l{int(self.include_lemma)}:{';'.join(stamp)}"
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data_handles"] = {}
        return state


class JsonlKnowledgeBase(KnowledgeRetriever):
    """A local knowledge base: JSONL (`.gz` accepted) with one `{"key": str, "text": str}` per line.

    Document n-grams (up to `max_ngram` words, lower-cased, joined by spaces) that equal a key
    retrieve its text; longer matches rank first, then earlier ones.
    """

    def __init__(self, path: str | Path, max_entries: int = 8, max_ngram: int = 3) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"app.data.knowledge.path: no such knowledge base file: {self.path}")
        self.max_entries = int(max_entries)
        self.max_ngram = int(max_ngram)
        self.entries: dict[str, str] = {}
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}:{line_no}: invalid JSON: {err.msg}") from err
                if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                    raise ValueError(f"{self.path}:{line_no}: expected an object with a string `key`")
                if not isinstance(record.get("text"), str):
                    raise ValueError(f"{self.path}:{line_no}: expected a string `text`")
                key = " ".join(words_of(record["key"]))
                if key:
                    self.entries.setdefault(key, record["text"])
        if not self.entries:
            raise ValueError(f"{self.path}: knowledge base has no entries")

    def retrieve(self, text: str) -> list[KnowledgeEntry]:
        words = words_of(text)
        found: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        for start, phrase in candidate_phrases(words, self.max_ngram):
            key = phrase.replace("_", " ")
            if key in self.entries and key not in seen:
                seen.add(key)
                found.append((-(key.count(" ") + 1), start, key))
        found.sort()
        return [KnowledgeEntry(key, self.entries[key]) for _, _, key in found[: self.max_entries]]

    def signature(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        return f"jsonl:{digest}:k{self.max_entries}:n{self.max_ngram}"


def texts_digest(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def retrieve_cached(
    retriever: KnowledgeRetriever, texts: Sequence[str], cache_dir: Path | None, split: str
) -> list[list[KnowledgeEntry]]:
    """Retrieve knowledge for every text of a split, reading/writing a JSON cache in `cache_dir`."""
    if cache_dir is None:
        return retriever.retrieve_many(texts)
    key = hashlib.sha256(f"{retriever.signature()}|{texts_digest(texts)}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"knowledge_{split}_{key}.json.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            stored = json.load(handle)
        if len(stored) == len(texts):
            return [[KnowledgeEntry(k, t) for k, t in doc] for doc in stored]
        log.warning(
            "%s: cached knowledge has %d documents, expected %d; rebuilding", path, len(stored), len(texts)
        )
    log.info("retrieving knowledge for %d %s documents (%s)", len(texts), split, type(retriever).__name__)
    retrieved = retriever.retrieve_many(texts)
    payload = json.dumps([[[e.key, e.text] for e in doc] for doc in retrieved]).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(gzip.compress(payload)))
    return retrieved

"""Readers and writers of aspect-level sentiment datasets.

Formats (``fmt`` of :func:`read_examples`):

- ``semeval_xml``: SemEval-2014 Task 4 XML, ``<sentence id><text/><aspectTerms><aspectTerm term
  polarity from to/></aspectTerms></sentence>``. ``conflict`` aspects are dropped (as in the PSSA
  paper and most ABSA work); sentences without aspect terms are skipped. Our generator adds the
  attributes ``opinion`` and ``negated`` to each ``aspectTerm``.
- ``twitter``: Dong et al. (ACL 2014), three lines per example: the sentence with ``$T$`` where the
  target stands, the target, and the label ``-1``/``0``/``1``.
- ``tnet``: tagged tokens as in TNet (Li et al., ACL 2018), one sentence per line of ``word/TAG``
  tokens with TAG in ``O``, ``T-POS``, ``T-NEG``, ``T-NEU``; the T-* tokens form the target.

Every error names the file and, where the format has one, the line.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apps.common.io import atomic_write

logger = logging.getLogger(__name__)

POLARITIES = ("negative", "neutral", "positive")
"""Sentiment classes; a label's index is its position here."""

FORMATS = ("semeval_xml", "twitter", "tnet")

TWITTER_PLACEHOLDER = "$T$"
TWITTER_LABELS = {"-1": "negative", "0": "neutral", "1": "positive"}
TNET_TAGS = {"O": None, "T-POS": "positive", "T-NEG": "negative", "T-NEU": "neutral"}
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class AspectExample:
    """One aspect term of a sentence with its sentiment; ``text[start:end] == term``."""

    sentence_id: str
    text: str
    term: str
    start: int
    end: int
    polarity: str
    opinion: str | None = None
    negated: bool = False


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file without their line ends; a decoding error names the line."""
    _check_exists(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line_no}: not valid UTF-8 ({err.reason})") from err
    return text.splitlines()


# --------------------------------------------------------------------------------------------------
# SemEval-2014 XML
# --------------------------------------------------------------------------------------------------


def _line_of(raw: bytes, needle: str) -> int | None:
    """1-based line of the first occurrence of ``needle`` in ``raw`` (for error messages only)."""
    position = raw.find(needle.encode("utf-8"))
    return None if position < 0 else raw[:position].count(b"\n") + 1


def read_semeval_xml(path: str | os.PathLike[str]) -> list[AspectExample]:
    """Read SemEval-2014 Task 4 XML; drops ``conflict`` aspects and checks every offset."""
    path = Path(path)
    _check_exists(path)
    raw = path.read_bytes()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        line, column = err.position
        raise ValueError(f"{path}:{line}:{column}: malformed XML: {err}") from err

    def where(sentence_id: str) -> str:
        line = _line_of(raw, f'id="{sentence_id}"')
        return f"{path}:{line}: sentence {sentence_id!r}" if line else f"{path}: sentence {sentence_id!r}"

    examples: list[AspectExample] = []
    conflicts = 0
    for index, sentence in enumerate(root.iter("sentence")):
        sentence_id = sentence.get("id")
        if sentence_id is None:
            raise ValueError(f"{path}: sentence number {index + 1} has no id attribute")
        text_node = sentence.find("text")
        if text_node is None or not text_node.text:
            raise ValueError(f"{where(sentence_id)}: missing <text>")
        text = text_node.text
        terms = sentence.find("aspectTerms")
        if terms is None:
            continue
        for aspect in terms.iter("aspectTerm"):
            attrs = aspect.attrib
            missing = [key for key in ("term", "polarity", "from", "to") if key not in attrs]
            if missing:
                raise ValueError(f"{where(sentence_id)}: aspectTerm without attribute(s) {missing}")
            term, polarity = attrs["term"], attrs["polarity"]
            if polarity == "conflict":
                conflicts += 1
                continue
            if polarity not in POLARITIES:
                raise ValueError(
                    f"{where(sentence_id)}: unknown polarity {polarity!r} of term {term!r}; "
                    f"expected one of {POLARITIES} or 'conflict'"
                )
            try:
                start, end = int(attrs["from"]), int(attrs["to"])
            except ValueError as err:
                raise ValueError(
                    f"{where(sentence_id)}: non-integer offsets from={attrs['from']!r} to={attrs['to']!r}"
                ) from err
            if not 0 <= start <= end <= len(text) or text[start:end] != term:
                raise ValueError(
                    f"{where(sentence_id)}: term {term!r} does not match text[{start}:{end}] = "
                    f"{text[start:end]!r}"
                )
            negated_attr = attrs.get("negated", "false")
            if negated_attr not in _BOOLEANS:
                raise ValueError(
                    f"{where(sentence_id)}: negated={negated_attr!r}, expected 'true' or 'false'"
                )
            examples.append(
                AspectExample(
                    sentence_id=sentence_id,
                    text=text,
                    term=term,
                    start=start,
                    end=end,
                    polarity=polarity,
                    opinion=attrs.get("opinion"),
                    negated=_BOOLEANS[negated_attr],
                )
            )
    if conflicts:
        logger.info("%s: dropped %d aspect terms with polarity 'conflict'", path, conflicts)
    if not examples:
        raise ValueError(f"{path}: no aspect terms found")
    logger.info("%s: read %d aspect examples", path, len(examples))
    return examples


def _xml_escape(value: str, where: str, attribute: bool) -> str:
    """Escape ``value`` for XML text or a double-quoted attribute, keeping ``\\r``/``\\n``/``\\t`` exact."""
    bad = [ch for ch in value if ord(ch) < 0x20 and ch not in "\t\n\r"]
    if bad:
        raise ValueError(f"{where}: control character {bad[0]!r} cannot be written in XML 1.0")
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    if attribute:
        value = value.replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
    return value


def write_semeval_xml(path: str | os.PathLike[str], examples: Sequence[AspectExample]) -> None:
    """Write examples as SemEval-2014 XML, one ``<sentence>`` per ``sentence_id`` (first-seen order).

    The write is atomic; :func:`read_semeval_xml` gives back the same examples.
    """
    path = Path(path)
    sentences: dict[str, list[AspectExample]] = {}
    for example in examples:
        group = sentences.setdefault(example.sentence_id, [])
        where = f"{path}: sentence {example.sentence_id!r}"
        if group and group[0].text != example.text:
            raise ValueError(f"{where}: two different texts share this sentence id")
        if example.text[example.start : example.end] != example.term:
            raise ValueError(
                f"{where}: term {example.term!r} does not match text[{example.start}:{example.end}]"
            )
        if example.polarity not in POLARITIES:
            raise ValueError(f"{where}: polarity {example.polarity!r} is not one of {POLARITIES}")
        group.append(example)

    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<sentences>"]
    for sentence_id, group in sentences.items():
        where = f"{path}: sentence {sentence_id!r}"
        lines.append(f'    <sentence id="{_xml_escape(sentence_id, where, True)}">')
        lines.append(f"        <text>{_xml_escape(group[0].text, where, False)}</text>")
        lines.append("        <aspectTerms>")
        for example in group:
            attrs = [
                ("term", example.term),
                ("polarity", example.polarity),
                ("from", str(example.start)),
                ("to", str(example.end)),
            ]
            if example.opinion is not None:
                attrs.append(("opinion", example.opinion))
            if example.opinion is not None or example.negated:
                attrs.append(("negated", "true" if example.negated else "false"))
            rendered = " ".join(f'{key}="{_xml_escape(value, where, True)}"' for key, value in attrs)
            lines.append(f"            <aspectTerm {rendered}/>")
        lines.append("        </aspectTerms>")
        lines.append("    </sentence>")
    lines.append("</sentences>")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    atomic_write(Path(path), lambda handle: handle.write(data))
    logger.info("%s: wrote %d sentences, %d aspect examples", path, len(sentences), len(examples))


# --------------------------------------------------------------------------------------------------
# Twitter (Dong et al. 2014)
# --------------------------------------------------------------------------------------------------


def read_twitter(path: str | os.PathLike[str]) -> list[AspectExample]:
    """Read the three-line Twitter format; ``$T$`` is replaced by the target (offsets of the first one)."""
    path = Path(path)
    lines = _read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    examples: list[AspectExample] = []
    for first in range(0, len(lines), 3):
        line_no = first + 1
        group = lines[first : first + 3]
        if len(group) < 3:
            raise ValueError(
                f"{path}:{line_no}: incomplete example at the end of the file "
                f"({len(group)} of 3 lines: sentence, target, label)"
            )
        for offset, line in enumerate(group):
            if not line.strip():
                raise ValueError(f"{path}:{line_no + offset}: blank line inside the data")
        sentence, target, label = (line.strip() for line in group)
        start = sentence.find(TWITTER_PLACEHOLDER)
        if start < 0:
            raise ValueError(f"{path}:{line_no}: sentence has no {TWITTER_PLACEHOLDER} placeholder")
        if label not in TWITTER_LABELS:
            raise ValueError(f"{path}:{line_no + 2}: label {label!r} is not one of {sorted(TWITTER_LABELS)}")
        examples.append(
            AspectExample(
                sentence_id=f"{path.stem}:{line_no}",
                text=sentence.replace(TWITTER_PLACEHOLDER, target),
                term=target,
                start=start,
                end=start + len(target),
                polarity=TWITTER_LABELS[label],
            )
        )
    if not examples:
        raise ValueError(f"{path}: no examples")
    logger.info("%s: read %d aspect examples", path, len(examples))
    return examples


# --------------------------------------------------------------------------------------------------
# TNet tagged tokens (Li et al. 2018)
# --------------------------------------------------------------------------------------------------


def _parse_tnet_line(path: Path, line_no: int, line: str) -> AspectExample:
    words: list[str] = []
    polarities: list[str | None] = []
    for token in line.split():
        word, slash, tag = token.rpartition("/")
        if not slash or not word:
            raise ValueError(f"{path}:{line_no}: token {token!r} is not of the form word/TAG")
        if tag not in TNET_TAGS:
            raise ValueError(
                f"{path}:{line_no}: unknown tag {tag!r} in {token!r}; expected one of {list(TNET_TAGS)}"
            )
        words.append(word)
        polarities.append(TNET_TAGS[tag])
    inside = [i for i, polarity in enumerate(polarities) if polarity is not None]
    if not inside:
        raise ValueError(f"{path}:{line_no}: no target tokens (T-POS/T-NEG/T-NEU)")
    first, last = inside[0], inside[-1]
    if len(inside) != last - first + 1:
        raise ValueError(f"{path}:{line_no}: more than one target run; expected one contiguous target")
    labels = sorted({polarities[i] for i in inside})
    if len(labels) > 1:
        raise ValueError(f"{path}:{line_no}: target tokens carry mixed polarities {labels}")
    text = " ".join(words)
    start = sum(len(word) + 1 for word in words[:first])
    term = " ".join(words[first : last + 1])
    return AspectExample(
        sentence_id=f"{path.stem}:{line_no}",
        text=text,
        term=term,
        start=start,
        end=start + len(term),
        polarity=labels[0],
    )


def read_tnet(path: str | os.PathLike[str]) -> list[AspectExample]:
    """Read TNet tagged-token lines (``word/TAG``, split on the last ``/``); blank lines are skipped."""
    path = Path(path)
    examples = [
        _parse_tnet_line(path, line_no, line)
        for line_no, line in enumerate(_read_lines(path), 1)
        if line.strip()
    ]
    if not examples:
        raise ValueError(f"{path}: no examples")
    logger.info("%s: read %d aspect examples", path, len(examples))
    return examples


_READERS = {"semeval_xml": read_semeval_xml, "twitter": read_twitter, "tnet": read_tnet}


def detect_format(path: str | os.PathLike[str]) -> str:
    """``semeval_xml`` for ``.xml`` files; otherwise ``twitter`` if line 1 holds ``$T$``, else ``tnet``."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return "semeval_xml"
    lines = _read_lines(path)
    return "twitter" if lines and TWITTER_PLACEHOLDER in lines[0] else "tnet"


def read_examples(path: str | os.PathLike[str], fmt: str = "auto") -> list[AspectExample]:
    """Read a dataset file in one of :data:`FORMATS`, or detect the format (``fmt="auto"``)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected 'auto' or one of {FORMATS}")
    path = Path(path)
    _check_exists(path)
    if fmt == "auto":
        fmt = detect_format(path)
        logger.debug("%s: detected format %s", path, fmt)
    return _READERS[fmt](path)

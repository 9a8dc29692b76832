"""Readers of multi-label text classification corpora, and the label vocabulary.

Formats (`app.data.format`):

- `debtags`: JSON lines (`.gz` accepted), one package per line with `text` and `labels` (a list
  of `facet::tag` strings) among other fields (`package`, `source`, ...).
- `jsonl`: generic JSON lines with a string `text` and a list of string `labels`.
- `text_labels`: the AAPD / RCV1-V2 / Reuters-21578 style used by SGM, LSAN and their successors:
  one document per line in a text file and, in a parallel file, the labels of each line separated
  by whitespace (or commas).

Every error names the file and the line.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from apps.common.io import sha256_file

FORMATS = ("debtags", "jsonl", "text_labels")
LABEL_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Document:
    """A document and its labels (names, as in the file)."""

    text: str
    labels: tuple[str, ...]


def _open_text(path: Path) -> IO[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def read_jsonl(path: str | Path, text_key: str = "text", labels_key: str = "labels") -> list[Document]:
    """Read JSON lines with a string `text_key` and a list-of-strings `labels_key` (blank lines skipped)."""
    path = Path(path).expanduser()
    documents = []
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: invalid JSON: {err.msg}") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            text = record.get(text_key)
            labels = record.get(labels_key)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{line_no}: `{text_key}` must be a non-empty string")
            if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
                raise ValueError(f"{path}:{line_no}: `{labels_key}` must be a list of non-empty strings")
            documents.append(Document(text.strip(), tuple(dict.fromkeys(labels))))
    if not documents:
        raise ValueError(f"{path}: no documents")
    return documents


def read_debtags(path: str | Path) -> list[Document]:
    """Read a debtags split (`{train,val,test}.jsonl.gz`); labels must look like `facet::tag`."""
    documents = read_jsonl(path)
    for line_no, doc in enumerate(documents, 1):
        bad = [label for label in doc.labels if "::" not in label]
        if bad:
            raise ValueError(f"{path}: document {line_no}: labels {bad} are not debtags (`facet::tag`)")
    return documents


def read_text_labels(text_path: str | Path, labels_path: str | Path) -> list[Document]:
    """Read the AAPD/RCV1 style: a text file (one document a line) and a parallel label file."""
    text_path, labels_path = Path(text_path).expanduser(), Path(labels_path).expanduser()
    with _open_text(text_path) as handle:
        texts = handle.read().splitlines()
    with _open_text(labels_path) as handle:
        label_lines = handle.read().splitlines()
    while texts and not texts[-1].strip() and len(texts) > len(label_lines):
        texts.pop()
    while label_lines and not label_lines[-1].strip() and len(label_lines) > len(texts):
        label_lines.pop()
    if len(texts) != len(label_lines):
        raise ValueError(
            f"{text_path} has {len(texts)} lines but {labels_path} has {len(label_lines)}; "
            "the label file must have one line per document"
        )
    documents = []
    for line_no, (text, label_line) in enumerate(zip(texts, label_lines), 1):
        if not text.strip():
            raise ValueError(f"{text_path}:{line_no}: empty document")
        labels = [x for x in LABEL_SEPARATORS.split(label_line.strip()) if x]
        if not labels:
            raise ValueError(f"{labels_path}:{line_no}: no labels")
        documents.append(Document(text.strip(), tuple(dict.fromkeys(labels))))
    if not documents:
        raise ValueError(f"{text_path}: no documents")
    return documents


def read_split(fmt: str, path: str | Path, labels_path: str | Path | None = None) -> list[Document]:
    """Read one split in format `fmt` (see the module docstring)."""
    if fmt == "debtags":
        return read_debtags(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "text_labels":
        if labels_path is None:
            raise ValueError(
                f"format text_labels: {path} needs a parallel label file (`<split>_labels_file`)"
            )
        return read_text_labels(path, labels_path)
    raise ValueError(f"app.data.format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def build_label_vocabulary(documents: Iterable[Document], min_freq: int = 1) -> tuple[list[str], Counter]:
    """Labels occurring in at least `min_freq` documents (sorted by name) and all label counts."""
    counts: Counter = Counter(label for doc in documents for label in doc.labels)
    labels = sorted(label for label, count in counts.items() if count >= min_freq)
    if not labels:
        raise ValueError(
            f"app.data.min_label_freq={min_freq}: no label occurs that often in the training split"
        )
    return labels, counts


def label_text(label: str) -> str:
    """Words of a label name: `devel::lang:python` → `devel lang python`, `implemented-in::c` → `implemented in c`."""
    words = [w for w in re.split(r"[:_\-/.]+", label) if w]
    return " ".join(words) if words else label


def verify_checksums(folder: Path, names: Sequence[str], sums_file: str = "SHA256SUMS") -> None:
    """Check `names` in `folder` against its `SHA256SUMS` (`<hex>  <name>` lines); raise on a mismatch."""
    sums_path = folder / sums_file
    if not sums_path.is_file():
        raise FileNotFoundError(
            f"{sums_path}: checksum file missing (app.data.verify_checksums=false skips this)"
        )
    expected: dict[str, str] = {}
    for line_no, line in enumerate(sums_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{sums_path}:{line_no}: expected `<sha256>  <file name>`")
        expected[parts[1].lstrip("*")] = parts[0].lower()
    for name in names:
        if name not in expected:
            raise ValueError(f"{sums_path}: no checksum for {name}")
        actual = sha256_file(folder / name)
        if actual != expected[name]:
            raise ValueError(
                f"{folder / name}: SHA-256 {actual} does not match {expected[name]} in {sums_path}; "
                "the file is corrupt or was changed"
            )

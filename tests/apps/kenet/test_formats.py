"""Readers of the multi-label formats, the label vocabulary and checksum verification."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from apps.kenet.formats import (
    build_label_vocabulary,
    label_text,
    read_debtags,
    read_jsonl,
    read_split,
    read_text_labels,
    verify_checksums,
)

ROOT = Path(__file__).resolve().parents[3]


def write_jsonl(path: Path, rows: list[object], gz: bool = False) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_real_debtags_validation_split_reads_and_verifies():
    folder = ROOT / "data" / "debtags"
    verify_checksums(folder, ["val.jsonl.gz"])
    docs = read_debtags(folder / "val.jsonl.gz")
    assert len(docs) == 2716  # the corpus README's count
    assert all("::" in label for doc in docs for label in doc.labels)


def test_generic_jsonl_gz_and_duplicate_labels(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "x.jsonl.gz",
        [{"text": " a b ", "labels": ["x", "y", "x"]}, {"text": "c", "labels": []}],
        gz=True,
    )
    docs = read_jsonl(path)
    assert [d.text for d in docs] == ["a b", "c"]
    assert docs[0].labels == ("x", "y")
    assert docs[1].labels == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"text": "", "labels": []}', "non-empty string"),
        ('{"text": "t", "labels": "a"}', "list of non-empty strings"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "labels": ["a"]}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:3: .*{message}"):
        read_jsonl(path)


def test_debtags_rejects_non_facet_labels(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "t", "labels": ["role::program"]}, {"text": "u", "labels": ["x"]}]
    )
    with pytest.raises(ValueError, match="document 2"):
        read_debtags(path)


def test_text_labels_pair(tmp_path: Path):
    (tmp_path / "text.txt").write_text("first doc\nsecond doc\n")
    (tmp_path / "labels.txt").write_text("cs.AI cs.LG\ncs.CL,cs.AI\n")
    docs = read_split("text_labels", tmp_path / "text.txt", tmp_path / "labels.txt")
    assert [d.labels for d in docs] == [("cs.AI", "cs.LG"), ("cs.CL", "cs.AI")]


def test_text_labels_errors(tmp_path: Path):
    (tmp_path / "text.txt").write_text("a\nb\nc\n")
    (tmp_path / "labels.txt").write_text("x\ny\n")
    with pytest.raises(ValueError, match="has 3 lines but .*labels.txt has 2"):
        read_text_labels(tmp_path / "text.txt", tmp_path / "labels.txt")
    (tmp_path / "labels.txt").write_text("x\n\nz\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: no labels"):
        read_text_labels(tmp_path / "text.txt", tmp_path / "labels.txt")
    with pytest.raises(ValueError, match="parallel label file"):
        read_split("text_labels", tmp_path / "text.txt")
    with pytest.raises(ValueError, match="unknown format"):
        read_split("csv", tmp_path / "text.txt")


def test_label_vocabulary_frequency_cut(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "v.jsonl",
        [
            {"text": "a", "labels": ["b", "a"]},
            {"text": "b", "labels": ["a"]},
            {"text": "c", "labels": ["c", "a"]},
        ],
    )
    labels, counts = build_label_vocabulary(read_jsonl(path), min_freq=2)
    assert labels == ["a"]
    assert counts["a"] == 3 and counts["b"] == 1
    with pytest.raises(ValueError, match="min_label_freq=5"):
        build_label_vocabulary(read_jsonl(path), min_freq=5)


def test_label_text_splits_facets():
    assert label_text("devel::lang:python") == "devel lang python"
    assert label_text("implemented-in::c++") == "implemented in c++"


def test_checksum_mismatch_names_file(tmp_path: Path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  a.txt\n")
    with pytest.raises(ValueError, match="a.txt: SHA-256"):
        verify_checksums(tmp_path, ["a.txt"])
    with pytest.raises(ValueError, match="no checksum for b.txt"):
        verify_checksums(tmp_path, ["b.txt"])

"""Word-LDA reference for the NMI of unit topics (apps.hubertopic.ceiling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.hubertopic.ceiling import main, word_documents, word_topic_nmi
from apps.hubertopic.formats import FormatError, read_librispeech

THEMES = {
    "sea": [
        "waves crash on the sandy shore near the reef",
        "the ship sails across waves to the reef shore",
        "fish swim near the reef where waves meet the shore",
    ],
    "space": [
        "the rocket reaches orbit around the red planet",
        "stars shine beyond the planet as the rocket climbs",
        "astronauts float in orbit above the planet and stars",
    ],
}


def _corpus(root: Path, with_theme: bool = True) -> Path:
    """Two speakers × both themes, silent (empty) audio files: the word reference reads text only."""
    rows = ["utt_id\ttheme"]
    for speaker in ("11", "12"):
        for chapter, (theme, sentences) in enumerate(THEMES.items(), start=1):
            folder = root / speaker / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for i, sentence in enumerate(sentences * 2):
                utt = f"{speaker}-{chapter}-{i:04d}"
                (folder / f"{utt}.wav").write_bytes(b"")
                lines.append(f"{utt} {sentence.upper()}")
                rows.append(f"{utt}\t{theme}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text("11 | M | x\n12 | F | x\n")
    if with_theme:
        (root / "metadata.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_word_documents_share_a_vocabulary_and_drop_stop_words(tmp_path: Path):
    utterances = read_librispeech(_corpus(tmp_path))
    docs = word_documents(utterances, stop_words=True)
    assert len(docs) == len(utterances) == 24
    first = docs["11-1-0000"]  # "waves crash on the sandy shore near the reef" without "on", "the"
    assert len(first) == 6
    assert docs["11-1-0000"].tolist() == docs["12-1-0000"].tolist()
    assert len(word_documents(utterances, stop_words=False)["11-1-0000"]) == 9


def test_word_topics_find_themes_not_speakers(tmp_path: Path):
    utterances = read_librispeech(_corpus(tmp_path))
    result = word_topic_nmi(utterances, num_topics=2, seeds=[0, 1, 2], permutations=20)
    assert set(result["mean"]) == {"speaker", "gender", "theme"}
    assert [run["seed"] for run in result["per_seed"]] == [0, 1, 2]
    # LDA may collapse to one topic from some initialisations; the others split the themes exactly
    assert max(run["theme"]["observed"] for run in result["per_seed"]) == pytest.approx(1.0)
    theme, speaker = result["mean"]["theme"], result["mean"]["speaker"]
    assert theme["observed"] > 0.5 > theme["chance_p95"]
    assert speaker["observed"] < 0.2


def test_cli_writes_json_and_missing_facts_fail_clearly(tmp_path: Path, capsys):
    root = _corpus(tmp_path / "a")
    out = tmp_path / "ceiling.json"
    main(["--corpus", str(root), "--topics", "2", "--seeds", "0", "--permutations", "10", "--out", str(out)])
    assert "| T = 2 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"][0]["num_topics"] == 2
    bare = _corpus(tmp_path / "b", with_theme=False)
    (bare / "SPEAKERS.TXT").unlink()
    utterances = read_librispeech(bare)
    for u in utterances:
        u.meta.pop("speaker")
    with pytest.raises(FormatError, match="no utterance facts"):
        word_topic_nmi(utterances, 2, [0])

"""The espeak-ng corpus: LibriSpeech layout, speakers / genders / themes, checksums, reuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from apps.hubertopic.corpus import CorpusConfig, build_corpus, load_sentences, speakers, transcript_text
from apps.hubertopic.formats import read_librispeech, read_manifest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_build_read_and_reuse(tmp_path: Path):
    config = CorpusConfig(num_speakers=2, utterances_per_speaker=3, themes=["sea", "space"])
    meta = build_corpus(tmp_path, config)
    assert meta["num_utterances"] == 6 and meta["seconds_of_audio"] > 1
    utts = read_librispeech(tmp_path / "corpus")
    assert len(utts) == 6
    assert {u.meta["gender"] for u in utts} == {"M", "F"}
    assert {u.meta["theme"] for u in utts} <= {"sea", "space"}
    assert all(u.meta["chapter"] == str(["sea", "space"].index(u.meta["theme"]) + 1) for u in utts)
    assert all(u.transcript and u.transcript == u.transcript.upper() for u in utts)
    ids = {u.utt_id for u in read_manifest(tmp_path / "train.tsv")} | {
        u.utt_id for u in read_manifest(tmp_path / "valid.tsv")
    }
    assert ids == {u.utt_id for u in utts}
    stamp = (tmp_path / "meta.json").stat().st_mtime_ns
    assert build_corpus(tmp_path, config)["file_sha256"] == meta["file_sha256"]
    assert (tmp_path / "meta.json").stat().st_mtime_ns == stamp
    # a changed file is detected and the corpus rebuilt
    wav = next((tmp_path / "corpus").rglob("*.wav"))
    wav.write_bytes(b"broken")
    build_corpus(tmp_path, config)
    assert json.loads((tmp_path / "meta.json").read_text())["file_sha256"] == meta["file_sha256"]


def test_speakers_alternate_gender_and_transcripts_are_normalised():
    voices = speakers(CorpusConfig(num_speakers=4))
    assert [s.gender for s in voices] == ["M", "F", "M", "F"]
    assert len({s.voice for s in voices}) == 4
    assert transcript_text("The ship's cargo: salt, timber!") == "THE SHIP'S CARGO SALT TIMBER"


def test_several_sentences_per_utterance(tmp_path: Path):
    one = CorpusConfig(num_speakers=2, utterances_per_speaker=2, themes=["sea", "space"])
    three = CorpusConfig(
        num_speakers=2, utterances_per_speaker=2, themes=["sea", "space"], sentences_per_utterance=3
    )
    short = build_corpus(tmp_path / "one", one)
    long = build_corpus(tmp_path / "three", three)
    assert "sentences_per_utterance" not in short["config"]  # corpora built before the knob stay valid
    assert long["config"]["sentences_per_utterance"] == 3
    assert long["seconds_of_audio"] > 2 * short["seconds_of_audio"]
    sentences = {t: [transcript_text(s) for s in load_sentences([t])[t]] for t in ("sea", "space")}
    for utt in read_librispeech(tmp_path / "three" / "corpus"):
        parts = [s for s in sentences[utt.meta["theme"]] if s in utt.transcript]
        assert len(parts) == 3 and sum(len(p) for p in parts) + 2 == len(utt.transcript)
    with pytest.raises(ValueError, match="sentences_per_utterance"):
        CorpusConfig(sentences_per_utterance=0)
    with pytest.raises(ValueError, match="has only 16 sentences"):
        build_corpus(
            tmp_path / "many",
            CorpusConfig(num_speakers=1, utterances_per_speaker=1, sentences_per_utterance=17),
        )

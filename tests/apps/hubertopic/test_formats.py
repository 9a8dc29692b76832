"""Corpus readers and audio loading: good input, and malformed input named by file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apps.hubertopic.audio import AudioError, load_audio, wav_bytes
from apps.hubertopic.formats import FormatError, manifest_text, read_librispeech, read_manifest
from tests.apps.hubertopic.conftest import tone


def test_librispeech_reader_reads_transcripts_speakers_and_gender(librispeech: Path):
    utts = read_librispeech(librispeech)
    assert [u.utt_id for u in utts][:3] == ["11-1-0000", "11-1-0001", "11-2-0000"]
    assert len(utts) == 8
    first = utts[0]
    assert first.transcript == "HELLO WORLD 0"
    assert first.meta["speaker"] == "11" and first.meta["chapter"] == "1" and first.meta["gender"] == "M"
    assert {u.meta["gender"] for u in utts if u.meta["speaker"] == "22"} == {"F"}


def test_librispeech_reader_metadata_columns(librispeech: Path):
    (librispeech / "metadata.tsv").write_text("utt_id\ttheme\n11-1-0000\tsea\n")
    utts = {u.utt_id: u for u in read_librispeech(librispeech)}
    assert utts["11-1-0000"].meta["theme"] == "sea"
    (librispeech / "metadata.tsv").write_text("utt_id\ttheme\n11-1-0000\n")
    with pytest.raises(FormatError, match=r"metadata.tsv:2: expected 2"):
        read_librispeech(librispeech)


def test_librispeech_malformed_transcript_names_file_and_line(librispeech: Path):
    trans = librispeech / "11" / "1" / "11-1.trans.txt"
    trans.write_text("11-1-0000 HELLO\n11-1-0001\n")
    with pytest.raises(FormatError, match=r"11-1.trans.txt:2: expected"):
        read_librispeech(librispeech)


def test_librispeech_missing_audio_and_orphan_audio(librispeech: Path):
    folder = librispeech / "11" / "1"
    (folder / "11-1-0001.wav").unlink()
    with pytest.raises(FormatError, match=r"11-1.trans.txt:2: no audio file for 11-1-0001"):
        read_librispeech(librispeech)
    (folder / "11-1-0001.wav").write_bytes(wav_bytes(tone(0.3, 300)))
    (folder / "11-1-0009.wav").write_bytes(wav_bytes(tone(0.3, 300)))
    with pytest.raises(FormatError, match=r"no transcript for audio file\(s\) 11-1-0009"):
        read_librispeech(librispeech)


def test_librispeech_bad_speakers_table_and_empty_folder(librispeech: Path, tmp_path: Path):
    (librispeech / "SPEAKERS.TXT").write_text("; header\n11 | X | test\n")
    with pytest.raises(FormatError, match=r"SPEAKERS.TXT:2"):
        read_librispeech(librispeech)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no '<speaker>/<chapter>/"):
        read_librispeech(tmp_path / "empty")


def test_manifest_roundtrip_and_errors(librispeech: Path, tmp_path: Path):
    utts = read_librispeech(librispeech)
    for utt in utts:
        utt.num_samples = len(load_audio(utt.path))
    path = tmp_path / "train.tsv"
    path.write_text(manifest_text(librispeech, utts))
    back = read_manifest(path)
    assert [u.utt_id for u in back] == [u.utt_id for u in utts]
    assert back[0].num_samples == utts[0].num_samples and back[0].meta["speaker"] == "11"
    assert back[0].path == utts[0].path
    for body, message in [
        ("", r"train.tsv:1: the first line"),
        (f"{librispeech}\n11/1/a.wav 100\n", r"train.tsv:2: expected 'relative_path<TAB>num_samples'"),
        (f"{librispeech}\n11/1/a.wav\tmany\n", r"train.tsv:2: number of samples 'many'"),
        (
            f"{librispeech}\n11/1/a.wav\t5\n11/1/b.wav\t-1\n",
            r"train.tsv:3: number of samples must be positive",
        ),
        (f"{librispeech}\n", r"lists no audio files"),
    ]:
        path.write_text(body)
        with pytest.raises(FormatError, match=message):
            read_manifest(path)


def test_load_audio_resamples_and_names_bad_files(tmp_path: Path):
    wave = tone(1.0, 440, rate=22_050)
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(wave, 22_050))
    loaded = load_audio(path)
    assert loaded.shape == (16_000,) and loaded.dtype == torch.float32
    assert np.abs(loaded.numpy()).max() < 0.5
    empty = tmp_path / "empty.wav"
    empty.write_bytes(wav_bytes(np.zeros(0, dtype=np.float32)))
    with pytest.raises(AudioError, match=r"empty.wav: the audio is empty"):
        load_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match=r"junk.wav: not a readable PCM WAV"):
        load_audio(junk)
    with pytest.raises(AudioError, match=r"missing.wav: no such audio file"):
        load_audio(tmp_path / "missing.wav")

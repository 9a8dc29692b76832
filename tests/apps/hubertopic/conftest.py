"""Tiny audio fixtures: synthetic WAV utterances in the LibriSpeech layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apps.hubertopic.audio import wav_bytes


def tone(seconds: float, freq: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_librispeech(root: Path, speakers: dict[str, str], per_chapter: int = 2, rate: int = 16_000) -> Path:
    """`<root>/<spk>/<chap>/...wav` + `.trans.txt` for every speaker, and `SPEAKERS.TXT` beside."""
    for s_index, speaker in enumerate(speakers):
        for chapter in ("1", "2"):
            folder = root / speaker / chapter
            folder.mkdir(parents=True, exist_ok=True)
            lines = []
            for index in range(per_chapter):
                utt = f"{speaker}-{chapter}-{index:04d}"
                wave = tone(0.5 + 0.1 * index, 200 + 80 * s_index + 30 * int(chapter), rate, seed=index)
                (folder / f"{utt}.wav").write_bytes(wav_bytes(wave, rate))
                lines.append(f"{utt} HELLO WORLD {index}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    table = ["; ID | SEX | SUBSET | MINUTES | NAME"] + [
        f"{s} | {g} | test | 1 | x" for s, g in speakers.items()
    ]
    (root / "SPEAKERS.TXT").write_text("\n".join(table) + "\n")
    return root


@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    return write_librispeech(tmp_path / "LibriSpeech" / "dev", {"11": "M", "22": "F"})


@pytest.fixture(autouse=True)
def single_thread():
    """The tiny models here run faster on one thread, and do not fight other jobs for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

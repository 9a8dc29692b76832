"""The default corpus: English sentences on several themes spoken by espeak-ng voices.

Speakers are espeak-ng accents combined with voice variants (`m*` male, `f*` female) plus a
per-speaker pitch and speed, so speaker, gender and theme are all known. The corpus is written in
the LibriSpeech layout (16 kHz WAV instead of FLAC) so the same reader serves it and real data::

    <out>/corpus/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.wav   chapter = theme index + 1
    <out>/corpus/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <out>/corpus/metadata.tsv      utt_id, speaker, gender, theme, voice
    <out>/SPEAKERS.TXT             LibriSpeech's speaker table (sex)
    <out>/train.tsv, valid.tsv     fairseq manifests of the pretraining split
    <out>/meta.json                config, generator version, sentence source and file checksums

Sentences come from `data/hubertopic/sentences/<theme>.txt` (one per line, written for this repo).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from apps.common.config import PROJECT_ROOT
from apps.common.io import atomic_write, sha256_file, write_json
from apps.hubertopic.audio import SAMPLE_RATE, load_audio, wav_bytes
from apps.hubertopic.formats import Utterance, manifest_text, read_librispeech

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
META_FILE = "meta.json"
CORPUS_DIR = "corpus"
SENTENCES_DIR = PROJECT_ROOT / "data" / "hubertopic" / "sentences"
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")


@dataclass
class CorpusConfig:
    """Size and voices of the espeak-ng corpus.

    Speaker `i` uses accent `i mod len(accents)` and alternates male/female variants; its pitch
    (espeak `-p`) and speed (`-s`, words per minute) are drawn once from `seed`. Each utterance
    speaks `sentences_per_utterance` different sentences of one theme (1: about 3 s; 3: about 10 s,
    closer to LibriSpeech's utterances and long enough for a topic model to see the theme).
    """

    num_speakers: int = 16
    utterances_per_speaker: int = 24
    themes: list[str] = field(default_factory=lambda: ["sea", "kitchen", "space", "sports", "forest"])
    accents: list[str] = field(default_factory=lambda: list(ACCENTS[:4]))
    valid_fraction: float = 0.1
    seed: int = 0
    sentences_per_utterance: int = 1

    def __post_init__(self) -> None:
        if self.sentences_per_utterance < 1:
            raise ValueError(
                f"generator.sentences_per_utterance must be >= 1, got {self.sentences_per_utterance}"
            )


@dataclass
class Speaker:
    speaker_id: str
    gender: str
    voice: str
    pitch: int
    speed: int


def load_sentences(themes: list[str], folder: Path = SENTENCES_DIR) -> dict[str, list[str]]:
    sentences = {}
    for theme in themes:
        path = folder / f"{theme}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sentence file for theme {theme!r}")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path}: no sentences")
        sentences[theme] = lines
    return sentences


def transcript_text(sentence: str) -> str:
    """LibriSpeech-style transcript: upper case letters, apostrophes and single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[^A-Z' ]", " ", sentence.upper())).strip()


def speakers(config: CorpusConfig) -> list[Speaker]:
    rng = np.random.default_rng(config.seed)
    out = []
    for index in range(config.num_speakers):
        accent = config.accents[index % len(config.accents)]
        female = index % 2 == 1
        variants = FEMALE_VARIANTS if female else MALE_VARIANTS
        variant = variants[(index // 2) % len(variants)]
        out.append(
            Speaker(
                speaker_id=str(100 + index),
                gender="F" if female else "M",
                voice=f"{accent}+{variant}",
                pitch=int(rng.integers(30, 71)),
                speed=int(rng.integers(140, 191)),
            )
        )
    return out


def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError(
            "espeak-ng is not installed; it builds the default HuBERTopic corpus "
            "(`apt-get install espeak-ng`, done by `make train` through SYSTEM_PACKAGES), "
            "or point app.data.corpus_dir / app.data.manifest at real audio"
        )
    return binary


def synthesize(text: str, speaker: Speaker, workdir: Path) -> np.ndarray:
    """The waveform `(T,)` at 16 kHz of `text` spoken by `speaker`."""
    wav = workdir / "utt.wav"
    command = [espeak_binary(), "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.speed)]
    proc = subprocess.run([*command, "-w", str(wav), text], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not wav.is_file():
        raise RuntimeError(f"espeak-ng failed for voice {speaker.voice}: {proc.stderr.strip()}")
    waveform = load_audio(wav).numpy()
    peak = float(np.abs(waveform).max())
    return waveform * (0.9 / peak) if peak > 0 else waveform


def _sentence_digest(sentences: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(sentences, sort_keys=True).encode()).hexdigest()


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _verified(out_dir: Path, meta: dict[str, Any]) -> bool:
    files = meta.get("file_sha256")
    if not isinstance(files, dict) or not files:
        return False
    return all((out_dir / name).is_file() and sha256_file(out_dir / name) == d for name, d in files.items())


def build_corpus(out_dir: str | Path, config: CorpusConfig | None = None) -> dict[str, Any]:
    """Build the corpus into `out_dir` (or reuse a verified build) and return `meta.json`'s content.

    Reused when `meta.json` records the same config, generator version and sentence source and every
    file still has its recorded sha256; otherwise rebuilt. Files are written atomically and
    `meta.json` last, so an interrupted build is redone on the next call.
    """
    config = config or CorpusConfig()
    out_dir = Path(out_dir)
    sentences = load_sentences(config.themes)
    recorded = asdict(config)
    if recorded["sentences_per_utterance"] == 1:
        del recorded["sentences_per_utterance"]  # corpora built before the knob existed stay valid
    expected = {
        "generator_version": GENERATOR_VERSION,
        "config": json.loads(json.dumps(recorded)),
        "sentences_sha256": _sentence_digest(sentences),
    }
    meta = _read_meta(out_dir)
    if meta is not None and all(meta.get(k) == v for k, v in expected.items()) and _verified(out_dir, meta):
        log.info("HuBERTopic corpus in %s is up to date", out_dir)
        return meta
    log.info("building the HuBERTopic espeak-ng corpus in %s", out_dir)
    started = time.perf_counter()
    corpus = out_dir / CORPUS_DIR
    if corpus.exists():
        shutil.rmtree(corpus)
    rng = np.random.default_rng(config.seed + 1)
    speaker_list = speakers(config)
    files: dict[str, str] = {}
    rows = ["utt_id\tspeaker\tgender\ttheme\tvoice"]
    utterances: list[Utterance] = []
    total = len(speaker_list) * config.utterances_per_speaker
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=total, desc="espeak-ng corpus", unit="utt") as bar:
        for speaker in speaker_list:
            transcripts: dict[int, list[str]] = {}
            for index in range(config.utterances_per_speaker):
                theme_index = int(rng.integers(len(config.themes)))
                theme = config.themes[theme_index]
                pool = sentences[theme]
                if config.sentences_per_utterance == 1:  # the draw of the first corpora, kept as it was
                    sentence = pool[int(rng.integers(len(pool)))]
                else:
                    if config.sentences_per_utterance > len(pool):
                        raise ValueError(
                            f"generator.sentences_per_utterance={config.sentences_per_utterance} but theme "
                            f"{theme!r} has only {len(pool)} sentences"
                        )
                    chosen = rng.choice(len(pool), size=config.sentences_per_utterance, replace=False)
                    sentence = " ".join(pool[int(i)] for i in chosen)
                chapter = str(theme_index + 1)
                utt_id = f"{speaker.speaker_id}-{chapter}-{index:04d}"
                waveform = synthesize(sentence, speaker, Path(tmp))
                relative = f"{CORPUS_DIR}/{speaker.speaker_id}/{chapter}/{utt_id}.wav"
                data = wav_bytes(waveform)
                atomic_write(out_dir / relative, lambda handle, data=data: handle.write(data))
                files[relative] = hashlib.sha256(data).hexdigest()
                transcripts.setdefault(theme_index + 1, []).append(f"{utt_id} {transcript_text(sentence)}")
                rows.append(f"{utt_id}\t{speaker.speaker_id}\t{speaker.gender}\t{theme}\t{speaker.voice}")
                utterances.append(Utterance(utt_id, out_dir / relative, None, len(waveform)))
                bar.update()
            for chapter_number, lines in transcripts.items():
                relative = f"{CORPUS_DIR}/{speaker.speaker_id}/{chapter_number}/"
                relative += f"{speaker.speaker_id}-{chapter_number}.trans.txt"
                files[relative] = _write(out_dir / relative, "\n".join(lines) + "\n")
    files[f"{CORPUS_DIR}/metadata.tsv"] = _write(
        out_dir / CORPUS_DIR / "metadata.tsv", "\n".join(rows) + "\n"
    )
    table = ["; ID | SEX | SUBSET | MINUTES | NAME"]
    table += [f"{s.speaker_id} | {s.gender} | espeak | 0 | {s.voice}" for s in speaker_list]
    files["SPEAKERS.TXT"] = _write(out_dir / "SPEAKERS.TXT", "\n".join(table) + "\n")
    order = np.random.default_rng(config.seed + 2).permutation(len(utterances))
    n_valid = max(1, int(round(config.valid_fraction * len(utterances))))
    valid = sorted((utterances[i] for i in order[:n_valid]), key=lambda u: u.utt_id)
    train = sorted((utterances[i] for i in order[n_valid:]), key=lambda u: u.utt_id)
    for name, split in (("train.tsv", train), ("valid.tsv", valid)):
        files[name] = _write(out_dir / name, manifest_text(out_dir, split))
    meta = {
        **expected,
        "num_utterances": len(utterances),
        "num_speakers": len(speaker_list),
        "seconds_of_audio": round(sum(u.num_samples or 0 for u in utterances) / SAMPLE_RATE, 1),
        "file_sha256": files,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out_dir / META_FILE, meta)
    log.info("built %d utterances in %.1f s", len(utterances), meta["build_seconds"])
    read_librispeech(corpus)  # the build must satisfy its own reader
    return meta


def _write(path: Path, text: str) -> str:
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()

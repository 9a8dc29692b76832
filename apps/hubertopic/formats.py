"""Readers of speech corpora: the LibriSpeech layout and fairseq-style TSV manifests.

LibriSpeech layout::

    <root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac|.wav
    <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   lines "<utt id> <TRANSCRIPT>"
    <root>/../SPEAKERS.TXT or <root>/SPEAKERS.TXT (optional)   lines "ID | SEX | SUBSET | MINUTES | NAME"

Manifest (fairseq's HuBERT/wav2vec2 `*.tsv`): first line the root folder, then one line per utterance
`<path relative to root>\t<number of samples>`.

Every reader checks what it reads and names the file and line of a malformed entry.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_SUFFIXES = (".flac", ".wav")


class FormatError(ValueError):
    """Malformed corpus input; the message names the file (and line)."""


@dataclass
class Utterance:
    """One utterance of a corpus. `meta` holds speaker, gender, theme and other per-utterance facts."""

    utt_id: str
    path: Path
    transcript: str | None = None
    num_samples: int | None = None
    meta: dict[str, str] = field(default_factory=dict)


def read_transcripts(path: Path) -> dict[str, str]:
    """`<id> <TEXT>` lines of a LibriSpeech `*.trans.txt` file."""
    transcripts: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        if not text.strip():
            raise FormatError(f"{path}:{number}: expected '<utterance id> <transcript>', got {line!r}")
        if utt_id in transcripts:
            raise FormatError(f"{path}:{number}: duplicate utterance id {utt_id}")
        transcripts[utt_id] = text.strip()
    return transcripts


def read_speakers(path: Path) -> dict[str, str]:
    """Speaker id → sex (`M`/`F`) from LibriSpeech's `SPEAKERS.TXT` (`;` lines are comments)."""
    speakers: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [part.strip() for part in line.split("|")]
        if len(fields) < 2 or not fields[0] or fields[1] not in {"M", "F"}:
            raise FormatError(f"{path}:{number}: expected 'ID | SEX(M/F) | ...', got {line!r}")
        speakers[fields[0]] = fields[1]
    return speakers


def read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """Per-utterance facts from a TSV with a header whose first column is `utt_id`."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or not rows[0] or rows[0][0] != "utt_id":
        raise FormatError(f"{path}:1: expected a header line starting with 'utt_id'")
    header = rows[0]
    table: dict[str, dict[str, str]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise FormatError(f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(row)}")
        table[row[0]] = dict(zip(header[1:], row[1:]))
    return table


def _find_speakers_file(root: Path) -> Path | None:
    for candidate in (root / "SPEAKERS.TXT", root.parent / "SPEAKERS.TXT"):
        if candidate.is_file():
            return candidate
    return None


def read_librispeech(root: str | Path, metadata: str | Path | None = None) -> list[Utterance]:
    """Utterances of a LibriSpeech-layout folder, sorted by id, with transcripts and speaker facts.

    Every audio file needs a transcript line and every transcript line an audio file. Speaker and
    chapter come from the folder names; gender from `SPEAKERS.TXT` when present; further columns
    (theme, ...) from `metadata` (default `<root>/metadata.tsv` when present).
    """
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: no such corpus folder")
    speakers_file = _find_speakers_file(root)
    genders = read_speakers(speakers_file) if speakers_file else {}
    metadata_path = Path(metadata) if metadata else root / "metadata.tsv"
    extra = read_metadata(metadata_path) if metadata_path.is_file() else {}
    utterances: list[Utterance] = []
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        speaker, chapter = trans.parent.parent.name, trans.parent.name
        expected_prefix = f"{speaker}-{chapter}-"
        transcripts = read_transcripts(trans)
        audio = {p.stem: p for p in trans.parent.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
        for number, (utt_id, text) in enumerate(transcripts.items(), start=1):
            if not utt_id.startswith(expected_prefix):
                raise FormatError(f"{trans}:{number}: utterance id {utt_id} is not in {speaker}/{chapter}")
            if utt_id not in audio:
                raise FormatError(f"{trans}:{number}: no audio file for {utt_id} in {trans.parent}")
            meta = {"speaker": speaker, "chapter": chapter, **extra.get(utt_id, {})}
            if speaker in genders:
                meta.setdefault("gender", genders[speaker])
            utterances.append(Utterance(utt_id, audio[utt_id], text, None, meta))
        orphans = sorted(set(audio) - set(transcripts))
        if orphans:
            raise FormatError(f"{trans}: no transcript for audio file(s) {', '.join(orphans[:5])}")
    if not utterances:
        raise FormatError(f"{root}: no '<speaker>/<chapter>/*.trans.txt' files found (LibriSpeech layout)")
    return sorted(utterances, key=lambda u: u.utt_id)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Utterances of a fairseq manifest: root folder, then `relative_path<TAB>num_samples` lines.

    The utterance id is the file name without suffix; the speaker is taken from LibriSpeech-style
    paths (`<speaker>/<chapter>/<file>`) when the path has that shape.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise FormatError(f"{path}:1: the first line must be the root folder of the audio files")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    utterances: list[Utterance] = []
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 2:
            raise FormatError(f"{path}:{number}: expected 'relative_path<TAB>num_samples', got {line!r}")
        relative, count = fields
        try:
            num_samples = int(count)
        except ValueError:
            raise FormatError(f"{path}:{number}: number of samples {count!r} is not an integer") from None
        if num_samples <= 0:
            raise FormatError(f"{path}:{number}: number of samples must be positive, got {num_samples}")
        audio = root / relative
        utt_id = Path(relative).stem
        if utt_id in seen:
            raise FormatError(f"{path}:{number}: duplicate utterance id {utt_id}")
        seen.add(utt_id)
        parts = Path(relative).parts
        meta = {"speaker": parts[-3], "chapter": parts[-2]} if len(parts) >= 3 else {}
        utterances.append(Utterance(utt_id, audio, None, num_samples, meta))
    if not utterances:
        raise FormatError(f"{path}: the manifest lists no audio files")
    return utterances


def manifest_text(root: str | Path, utterances: list[Utterance]) -> str:
    """Text of a fairseq manifest for `utterances` under `root` (num_samples must be known)."""
    root = Path(root)
    lines = [str(root)]
    for utt in utterances:
        if utt.num_samples is None:
            raise ValueError(f"{utt.utt_id}: number of samples unknown")
        lines.append(f"{utt.path.relative_to(root)}\t{utt.num_samples}")
    return "\n".join(lines) + "\n"

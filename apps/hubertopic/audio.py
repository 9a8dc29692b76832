"""Audio I/O and the MFCC features of HuBERT's first-iteration pseudo-labels.

WAV files are read with Python's `wave` module and numpy (no decoder library needed); other formats
(LibriSpeech's FLAC) go through `soundfile` when it is installed. Everything is resampled to
`SAMPLE_RATE` (16 kHz) with `torchaudio.functional.resample`.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor

SAMPLE_RATE = 16_000
#: MFCC hop (10 ms) and the model's frame hop (20 ms) in samples at 16 kHz.
MFCC_HOP = 160
MODEL_HOP = 320


class AudioError(ValueError):
    """An audio file that cannot be read, is empty or has an unsupported encoding."""


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with wave.open(str(path), "rb") as handle:
            channels = handle.getnchannels()
            width = handle.getsampwidth()
            rate = handle.getframerate()
            raw = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as err:
        raise AudioError(f"{path}: not a readable PCM WAV file ({err})") from err
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise AudioError(f"{path}: unsupported WAV sample width of {width} bytes")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples, rate


def _read_other(path: Path) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as err:
        raise AudioError(
            f"{path}: reading {path.suffix} files needs the `soundfile` package "
            "(pip install soundfile), or convert the corpus to WAV"
        ) from err
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises its own error types
        raise AudioError(f"{path}: could not decode audio ({err})") from err
    return samples.mean(axis=1), int(rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Mono waveform `(T,)` float32 in [-1, 1] at `sample_rate`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    samples, rate = _read_wav(path) if path.suffix.lower() == ".wav" else _read_other(path)
    if samples.size == 0:
        raise AudioError(f"{path}: the audio is empty (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{path}: the audio holds non-finite samples")
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, rate, sample_rate)
    return waveform


def wav_bytes(waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV file contents of `waveform (T,)` in [-1, 1]."""
    samples = np.asarray(waveform, dtype=np.float32)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def model_frames(num_samples: int) -> int:
    """Frames of the wav2vec2/HuBERT convolutional front end (receptive field 400, stride 320)."""
    return max(0, (num_samples - 400) // MODEL_HOP + 1)


def mfcc_features(waveform: Tensor, n_mfcc: int = 13) -> Tensor:
    """MFCC + Δ + ΔΔ `(F, 3·n_mfcc)` at a 10 ms hop (25 ms window), per-utterance mean-normalised.

    `F = 1 + T // 160` (centred frames), so `F >= 2 · model_frames(T)`: two label frames per
    20 ms model frame; `align_labels` takes every second one.
    """
    transform = torchaudio.transforms.MFCC(
        sample_rate=SAMPLE_RATE,
        n_mfcc=n_mfcc,
        melkwargs={"n_fft": 400, "win_length": 400, "hop_length": MFCC_HOP, "n_mels": 40, "center": True},
    )
    mfcc = transform(waveform)  # (n_mfcc, F)
    delta = torchaudio.functional.compute_deltas(mfcc)
    delta2 = torchaudio.functional.compute_deltas(delta)
    features = torch.cat([mfcc, delta, delta2], dim=0).T
    return features - features.mean(dim=0, keepdim=True)


def align_labels(labels: np.ndarray | Tensor, num_samples: int, label_hop: int) -> np.ndarray:
    """Frame labels at `label_hop` samples resampled to the model's 20 ms frames `(model_frames,)`.

    A 10 ms label stream (`label_hop=160`) gives two labels per model frame; frame `t` takes label
    `2t`. Raises if the stream is too short for the model's frame count.
    """
    labels = np.asarray(labels)
    frames = model_frames(num_samples)
    if MODEL_HOP % label_hop:
        raise ValueError(f"label hop {label_hop} does not divide the model hop {MODEL_HOP}")
    step = MODEL_HOP // label_hop
    if len(labels) < step * (frames - 1) + 1:
        raise ValueError(
            f"{len(labels)} labels at hop {label_hop} cannot cover {frames} model frames "
            f"of a {num_samples}-sample utterance"
        )
    return labels[: step * frames : step][:frames]

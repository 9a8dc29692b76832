"""ONNX export (dynamo, dynamic batch and length) of every mechanism, checked with onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from mech_cases import MECHANISMS

from shared_attention import Causal, KeyPadding

FAST = {"linear", "sigmoid"}


class _Block(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module, causal: bool) -> None:
        super().__init__()
        self.layer, self.causal = layer, causal

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        padding = KeyPadding(lengths)
        return self.layer(x, mask=Causal() & padding if self.causal else padding)


def _roundtrip(name: str, causal: bool, path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _Block(MECHANISMS[name](16, 4), causal).eval()
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=2, max=512)
    example = (torch.randn(2, 7, 16), torch.tensor([7, 4]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, example, dynamo=True, dynamic_shapes={"x": {0: batch, 1: length}, "lengths": {0: batch}}
        )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = (torch.randn(3, 13, 16), torch.tensor([13, 5, 9]))
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), check)})[0]
    with torch.no_grad():
        expected = model(*check).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(FAST))
def test_exports_with_dynamic_batch_and_length(name, tmp_path):
    _roundtrip(name, causal=True, path=tmp_path / f"{name}.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", sorted(set(MECHANISMS) - FAST))
def test_every_mechanism_exports(name, causal, tmp_path):
    _roundtrip(name, causal=causal, path=tmp_path / f"{name}.onnx")

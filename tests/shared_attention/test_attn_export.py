import warnings

import numpy as np
import pytest
import torch
from torch import nn

from shared_attention import Causal, MultiHeadAttention, PointerHead


class _MaskedBlock(nn.Module):
    """Self-attention with key padding then causal cross-step attention, as an app would use it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = MultiHeadAttention(16, 4, num_kv_heads=2, rotary=True)
        self.decoder = MultiHeadAttention(16, 4)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, mask=valid)
        return self.decoder(h, mask=Causal())


class _Pointer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = PointerHead(16, 16, 8, clip=10.0)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.head(query, keys, mask=valid)


def _inputs(batch, length, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, 16, generator=gen)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[0, length // 2 :] = False
    return x, valid


def _onnx_roundtrip(model, example, dynamic_shapes, path, check_inputs):
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=dynamic_shapes)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: t.numpy() for n, t in zip(names, check_inputs)})[0]
    with torch.no_grad():
        expected = model(*check_inputs).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_mha_exports_to_onnx_with_dynamic_batch_and_length(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _MaskedBlock().eval()
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=2, max=512)
    dynamic = {"x": {0: batch, 1: length}, "valid": {0: batch, 1: length}}
    _onnx_roundtrip(model, _inputs(2, 7, 0), dynamic, tmp_path / "mha.onnx", _inputs(3, 11, 1))


def test_pointer_head_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    model = _Pointer().eval()
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=2, max=512)
    dynamic = {"query": {0: batch}, "keys": {0: batch, 1: length}, "valid": {0: batch, 1: length}}
    keys, valid = _inputs(2, 6, 2)
    check_keys, check_valid = _inputs(4, 9, 3)
    _onnx_roundtrip(
        model,
        (torch.randn(2, 16), keys, valid),
        dynamic,
        tmp_path / "ptr.onnx",
        (torch.randn(4, 16), check_keys, check_valid),
    )


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_layers_trace_with_torchscript():
    torch.manual_seed(2)
    block = _MaskedBlock().eval()
    x, valid = _inputs(2, 7, 4)
    traced = torch.jit.trace(block, (x, valid))
    torch.testing.assert_close(traced(x, valid), block(x, valid))
    pointer = _Pointer().eval()
    query = torch.randn(2, 3, 16)
    traced_pointer = torch.jit.trace(pointer, (query, x, valid))
    other_x, other_valid = _inputs(5, 7, 5)
    other_query = torch.randn(5, 3, 16)
    torch.testing.assert_close(
        traced_pointer(other_query, other_x, other_valid), pointer(other_query, other_x, other_valid)
    )


def test_export_with_static_shapes_does_not_poison_mask_caches():
    from shared_attention import KeyPadding, SlidingWindow

    spec = SlidingWindow(3) & KeyPadding(torch.tensor([5, 3]))

    class Windowed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = MultiHeadAttention(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, mask=spec)

    model = Windowed().eval()
    x = torch.randn(2, 5, 16)
    torch.export.export(model, (x,))
    dense = spec.to_dense(2, 4, 5, 5)
    assert type(dense) is torch.Tensor
    torch.testing.assert_close(model(x), model.mha(x, mask=spec))

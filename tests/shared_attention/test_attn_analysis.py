import math

import pytest
import torch
from torch import nn

from shared_attention import (
    AdditiveAttention,
    Causal,
    MultiHeadAttention,
    PointerHead,
    attention,
    capture_attention,
)
from shared_attention.analysis import attention_entropy, sink_ratio


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MultiHeadAttention(16, 4, backend="sdpa") for _ in range(2)])
        self.additive = AdditiveAttention(16, 16, 8)
        self.pointer = PointerHead(16, 16, 8)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x, mask=Causal())
        context, _ = self.additive(x[:, 0], x, mask=valid)
        return self.pointer(context, x, mask=valid)


def test_capture_records_one_map_per_call_with_rows_summing_to_one():
    torch.manual_seed(0)
    model = _Model().eval()
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    before = model(x, valid)
    with capture_attention(model) as maps:
        during = model(x, valid)
        model(x, valid)
    torch.testing.assert_close(during, before, atol=1e-5, rtol=1e-4)
    assert set(maps) == {"layers.0", "layers.1", "additive", "pointer"}
    assert all(len(v) == 2 for v in maps.values())
    weights = maps.last("layers.0")
    assert weights.shape == (2, 4, 5, 5) and not weights.requires_grad
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    assert (weights.triu(1) == 0).all()
    for name in ("additive", "pointer"):
        torch.testing.assert_close(maps.last(name).sum(-1), torch.ones(2))
        assert (maps.last(name)[1, 3:] == 0).all()
    assert all(m.attention_recorder is None for m in model.modules() if hasattr(m, "attention_recorder"))


def test_capture_forces_math_for_plain_calls_and_restores_after_errors():
    q = k = v = torch.randn(1, 1, 3, 4)
    model = _Model()
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model):
            out, weights = attention(q, k, v, backend="sdpa", need_weights=True)
            assert weights.shape == (1, 1, 3, 3)
            raise RuntimeError("boom")
    assert model.layers[0].attention_recorder is None


def test_entropy_of_uniform_and_one_hot_rows():
    uniform = torch.full((2, 3, 8), 1 / 8)
    assert math.isclose(attention_entropy(uniform).item(), 3.0, rel_tol=1e-6)
    one_hot = torch.zeros(4, 5)
    one_hot[:, 2] = 1
    assert attention_entropy(one_hot).item() == 0
    assert attention_entropy(uniform, reduce=False).shape == (2, 3)


def test_sink_ratio():
    weights = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    assert math.isclose(sink_ratio(weights).item(), 0.3, rel_tol=1e-6)
    torch.testing.assert_close(sink_ratio(weights, sinks=2, reduce=False), torch.tensor([0.75, 0.2]))
    with pytest.raises(ValueError):
        sink_ratio(weights, sinks=-1)

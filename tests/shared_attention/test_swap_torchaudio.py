"""Swapping torchaudio's wav2vec2/HuBERT self-attention for the core's layers."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torchaudio

from shared_attention import LinearAttention, MultiHeadAttention, SigmoidAttention
from shared_attention.swap_torchaudio import TorchaudioAttentionAdapter, swap_torchaudio_attention


def tiny_wav2vec2() -> torch.nn.Module:
    torch.manual_seed(0)
    conv = [(16, 10, 5), *[(16, 3, 2)] * 4, *[(16, 2, 2)] * 2]
    return torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=conv,
        extractor_conv_bias=False,
        encoder_embed_dim=32,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=2,
        encoder_num_layers=2,
        encoder_num_heads=4,
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    ).eval()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_softmax_swap_matches_torchaudio_with_padding():
    reference = tiny_wav2vec2()
    swapped = copy.deepcopy(reference)
    names = swap_torchaudio_attention(swapped, partial(MultiHeadAttention, backend="math"))
    assert names == ["encoder.transformer.layers.0.attention", "encoder.transformer.layers.1.attention"]
    adapter = swapped.encoder.transformer.layers[0].attention
    assert isinstance(adapter, TorchaudioAttentionAdapter) and not adapter.training
    assert adapter.layer.dropout == 0.1
    original = reference.encoder.transformer.layers[0].attention
    assert torch.equal(adapter.layer.q_proj.weight, original.q_proj.weight)
    assert torch.equal(adapter.layer.out_proj.bias, original.out_proj.bias)
    waveforms = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 5000])
    with torch.no_grad():
        want, out_lengths = reference.extract_features(waveforms, lengths)
        got, _ = swapped.extract_features(waveforms, lengths)
    valid = torch.arange(want[0].shape[1])[None] < out_lengths[:, None]
    for w, g in zip(want, got):
        torch.testing.assert_close(g[valid], w[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factory", [partial(LinearAttention, feature_map="elu"), SigmoidAttention])
def test_other_mechanisms_carry_projections_and_run(factory):
    model = tiny_wav2vec2()
    originals = [layer.attention.v_proj.weight.clone() for layer in model.encoder.transformer.layers]
    swap_torchaudio_attention(model, factory)
    for layer, weight in zip(model.encoder.transformer.layers, originals):
        assert torch.equal(layer.attention.layer.v_proj.weight, weight)
    model.train()
    out, _ = model(torch.randn(2, 4000), torch.tensor([4000, 3000]))
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_swap_nothing_in_a_model_without_torchaudio_attention():
    assert swap_torchaudio_attention(torch.nn.Linear(3, 3), MultiHeadAttention) == []

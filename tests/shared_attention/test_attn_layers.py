import pytest
import torch
from torch import nn

from shared_attention import (
    AdditiveAttention,
    Causal,
    KeyPadding,
    MultiHeadAttention,
    PointerHead,
    RotaryEmbedding,
    SlidingWindow,
)


def _torch_mha_pair(embed_dim=16, heads=4, dropout=0.0):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(embed_dim, heads, batch_first=True, dropout=dropout)
    ours = MultiHeadAttention(embed_dim, heads, dropout=dropout).load_from_torch(reference)
    return reference.eval(), ours.eval()


def test_mha_matches_torch_multihead_attention():
    reference, ours = _torch_mha_pair()
    x = torch.randn(3, 7, 16)
    expected, _ = reference(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)


def test_mha_key_padding_and_causal_match_torch():
    reference, ours = _torch_mha_pair()
    x = torch.randn(2, 6, 16)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    expected, _ = reference(x, x, x, key_padding_mask=~valid, need_weights=False)
    torch.testing.assert_close(ours(x, mask=valid), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours(x, mask=KeyPadding(torch.tensor([6, 4]))), expected, atol=1e-5, rtol=1e-4)
    blocked = torch.ones(6, 6, dtype=torch.bool).triu(1)
    expected, _ = reference(x, x, x, attn_mask=blocked, need_weights=False)
    torch.testing.assert_close(ours(x, mask=Causal()), expected, atol=1e-5, rtol=1e-4)


def test_mha_cross_attention_with_kdim_vdim_matches_manual():
    torch.manual_seed(1)
    mha = MultiHeadAttention(8, 2, kdim=5, vdim=3).eval()
    x, context, values = torch.randn(2, 4, 8), torch.randn(2, 9, 5), torch.randn(2, 9, 3)
    out = mha(x, context=context, value=values)
    q = mha.q_proj(x).view(2, 4, 2, 4).transpose(1, 2)
    k = mha.k_proj(context).view(2, 9, 2, 4).transpose(1, 2)
    v = mha.v_proj(values).view(2, 9, 2, 4).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    expected = mha.out_proj((weights @ v).transpose(1, 2).reshape(2, 4, 8))
    assert out.shape == (2, 4, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_mha_cross_attention_matches_torch():
    reference, ours = _torch_mha_pair()
    x, context = torch.randn(2, 3, 16), torch.randn(2, 8, 16)
    valid = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    expected, _ = reference(x, context, context, key_padding_mask=~valid, need_weights=False)
    torch.testing.assert_close(ours(x, context=context, mask=valid), expected, atol=1e-5, rtol=1e-4)


def test_mha_grouped_query_matches_manual_repeat():
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 4, num_kv_heads=2).eval()
    assert mha.k_proj.out_features == 8
    x = torch.randn(2, 5, 16)
    q = mha.q_proj(x).view(2, 5, 4, 4).transpose(1, 2)
    k = mha.k_proj(x).view(2, 5, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
    v = mha.v_proj(x).view(2, 5, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~causal, float("-inf"))
    expected = mha.out_proj((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(mha(x, mask=Causal()), expected, atol=1e-5, rtol=1e-4)


def test_mha_backends_agree():
    torch.manual_seed(3)
    x = torch.randn(2, 11, 16)
    outputs = []
    for backend in ("math", "sdpa", "auto"):
        mha = MultiHeadAttention(16, 4, num_kv_heads=1, rotary=True, backend=backend).eval()
        torch.manual_seed(4)
        for p in mha.parameters():
            nn.init.normal_(p, std=0.3)
        outputs.append(mha(x, mask=SlidingWindow(3)))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs[0], outputs[2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["math", "sdpa", "flex", "auto"])
def test_mha_broadcasts_a_query_batch_of_one(backend):
    """Label/latent queries (1, Lq, E) against a batch of contexts equal the expanded queries,
    values and gradients alike."""
    torch.manual_seed(6)
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, backend=backend).eval()
    # FlexAttention has no backward on CPU (the layer runs on CPU here): values only
    queries = torch.randn(1, 5, 16, requires_grad=backend != "flex")
    context = torch.randn(3, 7, 16)
    padding = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5])
    with torch.set_grad_enabled(queries.requires_grad):
        broadcast = mha(queries, context=context, mask=padding)
        expanded = mha(queries.expand(3, -1, -1), context=context, mask=padding)
    torch.testing.assert_close(broadcast, expanded)
    if not queries.requires_grad:
        return
    (grad_b,) = torch.autograd.grad(broadcast.square().sum(), queries)
    (grad_e,) = torch.autograd.grad(expanded.square().sum(), queries)
    torch.testing.assert_close(grad_b, grad_e)
    with pytest.raises(ValueError, match="query batch 2 does not match context batch 3"):
        mha(torch.randn(2, 5, 16), context=context)


def test_mha_dropout_only_in_training():
    torch.manual_seed(5)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 6, 16)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha.eval()(x))


def test_mha_validation():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        MultiHeadAttention(16, 4, num_kv_heads=3)


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    scores = rope(q) @ rope(k).transpose(-1, -2)
    shifted = rope(q, offset=17) @ rope(k, offset=17).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, atol=1e-4, rtol=1e-4)
    positions = torch.arange(6) * 0 + 3
    same_pos = rope(q, positions) @ rope(k, positions).transpose(-1, -2)
    torch.testing.assert_close(same_pos, q @ k.transpose(-1, -2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rope(q).norm(dim=-1), q.norm(dim=-1))


def test_rotary_batched_positions_and_validation():
    rope = RotaryEmbedding(4)
    x = torch.randn(2, 3, 5, 4)
    positions = torch.stack([torch.arange(5), torch.arange(5) + 2])
    out = rope(x, positions)
    torch.testing.assert_close(out[1], rope(x[1:], offset=2)[0])
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(5)


def test_mha_rotary_applies_to_cross_attention_only_when_configured():
    torch.manual_seed(6)
    plain = MultiHeadAttention(8, 2).eval()
    rotary = MultiHeadAttention(8, 2, rotary=True).eval()
    rotary.load_state_dict(plain.state_dict())
    x, context = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    torch.testing.assert_close(rotary(x, context=context), plain(x, context=context))
    assert not torch.allclose(rotary(x), plain(x))
    cross = MultiHeadAttention(8, 2, rotary=True, rotary_cross=True).eval()
    cross.load_state_dict(plain.state_dict())
    assert not torch.allclose(cross(x, context=context), plain(x, context=context))


def _additive_reference(layer, query, keys, mask):
    pk = layer.key_proj(keys)
    scores = layer.score(torch.tanh(pk + layer.query_proj(query)[:, None])).squeeze(-1)
    return scores.masked_fill(~mask, float("-inf"))


def test_additive_attention_masking_and_formula():
    torch.manual_seed(7)
    layer = AdditiveAttention(6, 5, 8)
    query, keys = torch.randn(3, 6), torch.randn(3, 4, 5)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False], [False] * 4])
    context, weights = layer(query, keys, mask=mask)
    assert context.shape == (3, 5) and weights.shape == (3, 4)
    assert (weights[~mask] == 0).all()
    expected = torch.softmax(_additive_reference(layer, query, keys, mask)[:2], -1)
    torch.testing.assert_close(weights[:2], expected)
    torch.testing.assert_close(context[:2], (expected[:, :, None] * keys[:2]).sum(1))
    assert (weights[2] == 0).all() and (context[2] == 0).all()
    pre = layer.project_keys(keys)
    torch.testing.assert_close(layer(query, keys, mask=mask, projected_keys=pre)[1], weights)


def test_additive_attention_scores_and_offset():
    torch.manual_seed(9)
    layer = AdditiveAttention(6, 5, 8)
    query, keys = torch.randn(2, 6), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, False, True], [True] * 4])
    scores = layer.scores(query, keys)
    expected = _additive_reference(layer, query, keys, torch.ones_like(mask))
    torch.testing.assert_close(scores, expected)
    offset = torch.randn(2, 4, requires_grad=True)
    _, weights = layer(query, keys, mask=mask, score_offset=offset)
    shifted = (scores + offset).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(weights, torch.softmax(shifted, -1))
    weights[:, 0].sum().backward()
    assert offset.grad is not None and (offset.grad[~mask] == 0).all() and offset.grad.abs().sum() > 0


def test_pointer_head_logits_masking_clip_and_steps():
    torch.manual_seed(8)
    head = PointerHead(6, 5, 8, clip=10.0, temperature=2.0)
    query, keys = torch.randn(2, 3, 6), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, False, True, True], [False] * 4])
    logits = head(query, keys, mask=mask)
    assert logits.shape == (2, 3, 4)
    assert (logits[0, :, 1] == torch.finfo(logits.dtype).min).all()
    assert torch.isfinite(logits).all()
    valid = logits[0][:, mask[0]]
    assert valid.abs().max() <= 10.0 / 2.0
    for t in range(3):
        torch.testing.assert_close(head(query[:, t], keys, mask=mask), logits[:, t])
    probs = torch.softmax(logits, -1)
    assert (probs[0, :, 1] == 0).all()
    assert torch.isfinite(probs).all()
    step_mask = torch.ones(2, 3, 4, dtype=torch.bool)
    step_mask[:, 1, 0] = False
    stepped = head(query, keys, mask=step_mask)
    assert (stepped[:, 1, 0] == torch.finfo(stepped.dtype).min).all() and (stepped[:, 0, 0] > -1e30).all()


def test_pointer_head_unclipped_matches_formula():
    torch.manual_seed(9)
    head = PointerHead(3, 3, 4)
    query, keys = torch.randn(2, 3), torch.randn(2, 5, 3)
    expected = head.score(torch.tanh(head.key_proj(keys) + head.query_proj(query)[:, None])).squeeze(-1)
    torch.testing.assert_close(head(query, keys), expected)
    with pytest.raises(ValueError, match="clip"):
        PointerHead(3, 3, 4, clip=-1.0)

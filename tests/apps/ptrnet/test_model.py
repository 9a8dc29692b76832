"""Pointer Networks model, constrained decoding and a learning check."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from apps.ptrnet.data import collate_examples
from apps.ptrnet.decoding import allowed_positions, greedy_decode, positions_to_indices, targets_to_positions
from apps.ptrnet.formats import Example
from apps.ptrnet.generate import generate_examples
from apps.ptrnet.model import LSTMEncoder, PointerNet, TransformerEncoder
from shared_attention import MultiHeadAttention


def _net(kind: str, glimpse: bool = False, clip: float | None = None) -> PointerNet:
    torch.manual_seed(0)
    if kind == "lstm":
        encoder = LSTMEncoder(embed_dim=16, hidden_dim=24)
    else:
        encoder = TransformerEncoder(
            embed_dim=24,
            num_layers=1,
            num_heads=4,
            ff_dim=32,
            attention=functools.partial(MultiHeadAttention, backend="math"),
        )
    return PointerNet(encoder, embed_dim=16, glimpse=glimpse, clip=clip).eval()


def _example(n: int, seed: int) -> Example:
    points = np.random.default_rng(seed).random((n, 2), dtype=np.float32)
    return Example(points, list(range(min(n, 4))), "convex_hull")


def _batch(ns: list[int]) -> dict:
    return collate_examples([_example(n, seed) for seed, n in enumerate(ns)])


def test_targets_to_positions_and_back():
    positions = targets_to_positions([[2, 0, 1], [4]])
    assert positions.tolist() == [[3, 1, 2, 0], [5, 0, -100, -100]]
    assert positions_to_indices(positions.clamp(min=-1)) == [[2, 0, 1], [4]]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("glimpse", [False, True])
def test_padding_does_not_change_an_example(kind: str, glimpse: bool):
    net = _net(kind, glimpse=glimpse, clip=10.0)
    batch = collate_examples([_example(7, 0), _example(4, 1)])
    alone = collate_examples([_example(4, 1)])
    with torch.no_grad():
        mixed = net(batch["points"], batch["lengths"], batch["target"])
        single = net(alone["points"], alone["lengths"], alone["target"])
    # example 1 has 4 points padded to 7: its logits over real positions must not change
    width = single.shape[-1]
    torch.testing.assert_close(mixed[1, : single.shape[1], :width], single[0], atol=1e-5, rtol=1e-5)
    assert torch.isinf(mixed[1, :, width:]).all() or (mixed[1, :, width:] < -1e8).all()


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_step_matches_teacher_forcing(kind: str):
    net = _net(kind, glimpse=True)
    batch = _batch([6, 5])
    with torch.no_grad():
        forced = net(batch["points"], batch["lengths"], batch["target"])
        enc = net.encode(batch["points"], batch["lengths"])
        h, c, previous = enc.h, enc.c, torch.zeros(2, dtype=torch.long)
        for t in range(batch["target"].shape[1]):
            logits, h, c = net.step(batch["points"], previous, h, c, enc)
            torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-5)
            previous = batch["target"][:, t].clamp(min=0)


def test_hull_and_tsp_constraints():
    valid = torch.tensor([[True, True, True, True, False]])
    visited = torch.tensor([[False, True, False, False, False]])
    lengths = torch.tensor([3])
    none = torch.zeros_like(visited)
    hull = allowed_positions("convex_hull", valid, visited, none, 1, lengths)
    assert hull.tolist() == [[False, False, True, True, False]]
    tsp_done = allowed_positions(
        "tsp", valid, torch.tensor([[False, True, True, True, False]]), none, 3, lengths
    )
    assert tsp_done.tolist() == [[True, False, False, False, False]]
    with pytest.raises(ValueError, match="unknown decoding task"):
        allowed_positions("sorting", valid, visited, none, 0, lengths)


@pytest.mark.parametrize("task", ["convex_hull", "tsp", "delaunay"])
def test_greedy_decode_respects_constraints(task: str):
    net = _net("transformer")
    batch = _batch([6, 9, 4])
    sequences = positions_to_indices(greedy_decode(net, batch["points"], batch["lengths"], task))
    for seq, n in zip(sequences, batch["lengths"].tolist()):
        assert all(0 <= i < n for i in seq)
        if task == "convex_hull":
            assert len(set(seq)) == len(seq) and len(seq) >= 3
        elif task == "tsp":
            assert sorted(seq) == list(range(n))
        else:
            assert len(seq) % 3 == 0 and all(len(set(seq[i : i + 3])) == 3 for i in range(0, len(seq), 3))


def test_learns_convex_hull_on_a_small_set():
    """A small model must fit 32 hulls of 6 points: the loss collapses and greedy decoding is exact."""
    torch.manual_seed(0)
    examples = generate_examples("convex_hull", 6, 32, seed=3, workers=1, progress=False)
    batch = collate_examples(examples)
    net = PointerNet(LSTMEncoder(embed_dim=32, hidden_dim=64), embed_dim=32).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(300):
        logits = net(batch["points"], batch["lengths"], batch["target"])
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["target"].flatten(), ignore_index=-100
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    net.eval()
    predicted = positions_to_indices(greedy_decode(net, batch["points"], batch["lengths"], "convex_hull"))
    from apps.ptrnet.metrics import batch_hull_metrics

    scores = batch_hull_metrics([e.points for e in examples], predicted, [e.target for e in examples])
    assert scores["exact"] > 0.9 and scores["failure_rate"] == 0.0

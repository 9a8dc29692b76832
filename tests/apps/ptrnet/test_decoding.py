"""Beam search, sampling and the attention decoder: constraints, equivalences, likelihood ordering."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from apps.ptrnet.data import collate_examples
from apps.ptrnet.decoding import (
    beam_search,
    decode,
    greedy_decode,
    positions_to_indices,
    sample_decode,
    sample_rollout,
    sequence_log_likelihood,
    tour_lengths,
)
from apps.ptrnet.formats import Example
from apps.ptrnet.metrics import tour_length
from apps.ptrnet.model import LSTMEncoder, PointerNet, TransformerEncoder
from shared_attention import MultiHeadAttention


def _net(decoder: str = "lstm", encoder: str = "transformer", mask_visited: bool = True) -> PointerNet:
    torch.manual_seed(0)
    if encoder == "lstm":
        enc = LSTMEncoder(embed_dim=16, hidden_dim=24)
    else:
        enc = TransformerEncoder(
            embed_dim=24,
            num_layers=1,
            num_heads=4,
            ff_dim=32,
            attention=functools.partial(MultiHeadAttention, backend="math"),
        )
    return PointerNet(
        enc, embed_dim=16, glimpse=True, decoder=decoder, decoder_heads=4, mask_visited=mask_visited
    ).eval()


def _batch(ns: list[int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    examples = [Example(rng.random((n, 2), dtype=np.float32), list(range(n)), "tsp") for n in ns]
    return collate_examples(examples)


def _check(task: str, sequences: list[list[int]], lengths: list[int]) -> None:
    for seq, n in zip(sequences, lengths):
        assert all(0 <= i < n for i in seq)
        if task == "convex_hull":
            assert len(set(seq)) == len(seq) and len(seq) >= min(3, n)
        elif task == "tsp":
            assert sorted(seq) == list(range(n))
        else:
            assert len(seq) % 3 == 0 and all(len(set(seq[i : i + 3])) == 3 for i in range(0, len(seq), 3))


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
def test_beam_width_one_is_greedy(decoder: str):
    batch = _batch([7, 5, 9])
    for task in ("convex_hull", "tsp", "delaunay"):
        net = _net(decoder, mask_visited=task != "delaunay")
        greedy = greedy_decode(net, batch["points"], batch["lengths"], task)
        beam, _ = beam_search(net, batch["points"], batch["lengths"], task, beam_width=1)
        assert torch.equal(greedy, beam), task


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
@pytest.mark.parametrize("task", ["convex_hull", "tsp", "delaunay"])
def test_beam_respects_constraints_and_beats_greedy_likelihood(decoder: str, task: str):
    net = _net(decoder, mask_visited=task != "delaunay")
    batch = _batch([8, 6, 10, 5], seed=1)
    points, lengths = batch["points"], batch["lengths"]
    greedy = greedy_decode(net, points, lengths, task)
    beam, beam_score = beam_search(net, points, lengths, task, beam_width=4)
    _check(task, positions_to_indices(beam), lengths.tolist())
    greedy_ll = sequence_log_likelihood(net, points, lengths, greedy, task)
    beam_ll = sequence_log_likelihood(net, points, lengths, beam, task)
    torch.testing.assert_close(beam_ll, beam_score, atol=1e-4, rtol=1e-4)
    assert bool((beam_ll >= greedy_ll - 1e-5).all())


def test_length_penalty_still_gives_valid_sequences():
    net = _net()
    batch = _batch([6, 9])
    beam, _ = beam_search(
        net, batch["points"], batch["lengths"], "convex_hull", beam_width=3, length_penalty=1.0
    )
    _check("convex_hull", positions_to_indices(beam), batch["lengths"].tolist())


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
def test_sampling_gives_valid_tours_and_best_of_k_is_shortest(decoder: str):
    net = _net(decoder)
    batch = _batch([9, 6, 8], seed=2)
    points, lengths = batch["points"], batch["lengths"]
    generator = torch.Generator().manual_seed(0)
    best, samples, log_likelihood = sample_decode(
        net, points, lengths, "tsp", num_samples=8, generator=generator
    )
    assert samples.shape[:2] == (3, 8) and log_likelihood.shape == (3, 8)
    assert bool(torch.isfinite(log_likelihood).all())
    tours = positions_to_indices(best)
    _check("tsp", tours, lengths.tolist())
    for row, n in enumerate(lengths.tolist()):
        pts = points[row, :n].numpy()
        drawn = [tour_length(pts, tour) for tour in positions_to_indices(samples[row])]
        assert len(set(map(tuple, positions_to_indices(samples[row])))) > 1
        assert tour_length(pts, tours[row]) == pytest.approx(min(drawn))
    # very low temperature concentrates on the greedy sequence
    cold = decode(net, points, lengths, "tsp", strategy="sample", num_samples=1, temperature=1e-4, seed=0)
    assert torch.equal(cold, greedy_decode(net, points, lengths, "tsp"))


def test_sample_rollout_has_gradients_and_matches_likelihood():
    net = _net("attention").train()
    batch = _batch([6, 7])
    positions, log_likelihood = sample_rollout(net, batch["points"], batch["lengths"], "tsp")
    log_likelihood.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    again = sequence_log_likelihood(net, batch["points"], batch["lengths"], positions, "tsp")
    torch.testing.assert_close(again, log_likelihood.detach(), atol=1e-4, rtol=1e-4)


def test_tour_lengths_match_numpy():
    batch = _batch([5, 7])
    positions = torch.tensor([[3, 1, 2, 5, 4, 0, -1, -1], [1, 2, 3, 4, 5, 6, 7, 0]])
    lengths = tour_lengths(batch["points"], positions)
    expected = [
        tour_length(batch["points"][0, :5].numpy(), [2, 0, 1, 4, 3]),
        tour_length(batch["points"][1, :7].numpy(), list(range(7))),
    ]
    torch.testing.assert_close(lengths, torch.tensor(expected, dtype=lengths.dtype), atol=1e-5, rtol=1e-5)


def test_unknown_strategy_is_a_clear_error():
    net = _net()
    batch = _batch([5])
    with pytest.raises(ValueError, match="app.module.decode.strategy"):
        decode(net, batch["points"], batch["lengths"], "tsp", strategy="nucleus")


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_attention_decoder_step_matches_teacher_forcing(encoder: str):
    net = _net("attention", encoder=encoder)
    batch = _batch([6, 5, 8])
    with torch.no_grad():
        forced = net(batch["points"], batch["lengths"], batch["target"])
        enc = net.encode(batch["points"], batch["lengths"])
        state, previous = net.init_state(enc), torch.zeros(3, dtype=torch.long)
        for t in range(batch["target"].shape[1]):
            logits, state = net.decode_step(batch["points"], previous, state, enc)
            keep = batch["target"][:, t] != -100
            torch.testing.assert_close(logits[keep], forced[keep, t], atol=1e-5, rtol=1e-5)
            previous = batch["target"][:, t].clamp(min=0)


def test_attention_decoder_padding_does_not_change_an_example():
    net = _net("attention")
    mixed = _batch([7, 4])
    alone = collate_examples([mixed["examples"][1]])
    with torch.no_grad():
        both = net(mixed["points"], mixed["lengths"], mixed["target"])
        single = net(alone["points"], alone["lengths"], alone["target"])
    width = single.shape[-1]
    torch.testing.assert_close(both[1, : single.shape[1], :width], single[0], atol=1e-5, rtol=1e-5)


def test_bad_decoder_config_is_a_clear_error():
    with pytest.raises(ValueError, match="app.model.decoder"):
        PointerNet(LSTMEncoder(embed_dim=8, hidden_dim=8), decoder="gru")
    with pytest.raises(ValueError, match="decoder_heads"):
        PointerNet(LSTMEncoder(embed_dim=8, hidden_dim=10), decoder="attention", decoder_heads=4)

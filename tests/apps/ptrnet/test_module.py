"""The LightningModule's options: decoding strategies from config, REINFORCE with a rollout baseline, plots."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.ptrnet.data import collate_examples
from apps.ptrnet.decoding import greedy_decode, tour_lengths
from apps.ptrnet.generate import generate_examples
from apps.ptrnet.model import PointerNet, TransformerEncoder
from apps.ptrnet.module import PointerNetModule
from apps.ptrnet.plots import plot_predictions
from shared_attention import MultiHeadAttention


def _model(decoder: str = "attention") -> PointerNet:
    torch.manual_seed(0)
    encoder = TransformerEncoder(
        embed_dim=32,
        num_layers=1,
        num_heads=4,
        ff_dim=64,
        attention=functools.partial(MultiHeadAttention, backend="math"),
    )
    return PointerNet(encoder, embed_dim=32, decoder=decoder, decoder_heads=4, clip=10.0)


def _module(**kwargs) -> PointerNetModule:
    optimizer = functools.partial(torch.optim.Adam, lr=3e-3)
    return PointerNetModule(_model(), optimizer, **kwargs)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="app.module.decode.strategy"):
        _module(task="tsp", decode={"strategy": "nucleus"})
    with pytest.raises(ValueError, match="app.module.decode.beam_size"):
        _module(task="tsp", decode={"beam_size": 3})
    with pytest.raises(ValueError, match="app.module.objective"):
        _module(task="tsp", objective="ppo")
    with pytest.raises(ValueError, match="needs app.data.task=tsp"):
        _module(task="convex_hull", objective="reinforce")
    with pytest.raises(ValueError, match="app.model.mask_visited"):
        _module(task="delaunay")


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_configured_strategy_decodes_valid_tours(strategy: str):
    module = _module(task="tsp", decode={"strategy": strategy, "beam_width": 3, "num_samples": 4}).eval()
    examples = generate_examples("tsp", 7, 6, seed=5, workers=1, progress=False)
    batch = collate_examples(examples)
    positions = module.predict_positions(batch["points"], batch["lengths"])
    scores = module.sequence_metrics(examples, [[p - 1 for p in row if p > 0] for row in positions.tolist()])
    assert scores["valid"] == 1.0 and scores["gap"] >= -1e-6


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_reinforce_lowers_the_tour_length_and_updates_the_baseline():
    """A tiny TSP (n = 6): REINFORCE with the greedy-rollout baseline shortens greedy tours."""
    torch.manual_seed(0)
    module = _module(
        task="tsp",
        objective="reinforce",
        scheduler=None,
        reinforce={"baseline_size": 256, "baseline_batch_size": 256, "significance": 0.05},
    )
    generator = torch.Generator().manual_seed(1)
    evaluation = torch.rand(256, 6, 2, generator=generator)
    lengths = torch.full((256,), 6, dtype=torch.long)

    def greedy_cost() -> float:
        module.model.eval()
        cost = tour_lengths(evaluation, greedy_decode(module.model, evaluation, lengths, "tsp")).mean()
        module.model.train()
        return float(cost)

    before = greedy_cost()
    optimizer = module.configure_optimizers()
    module.model.train()
    for _ in range(40):
        points = torch.rand(64, 6, 2, generator=generator)
        loss = module._reinforce_step({"points": points, "lengths": torch.full((64,), 6, dtype=torch.long)})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = greedy_cost()
    assert after < before - 0.1, (before, after)
    # the trained policy is significantly better than the initial baseline: the baseline takes its weights
    module.on_train_epoch_end()
    for name, weight in module.model.state_dict().items():
        assert torch.equal(weight, module.baseline.state_dict()[name]), name
    assert module._holdout is not None and module._holdout.shape == (256, 6, 2)


def test_plot_writes_png_for_every_task(tmp_path: Path):
    rng = np.random.default_rng(0)
    for task in ("convex_hull", "delaunay", "tsp"):
        examples = generate_examples(task, 8, 3, seed=1, workers=1, progress=False)
        predictions = [list(rng.permutation(8)[:6]) for _ in examples]
        path = plot_predictions(
            tmp_path / f"{task}.png",
            task,
            [e.points for e in examples],
            predictions,
            [e.target for e in examples],
        )
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[3] / "conf" / "experiment").glob("ptrnet_*.yaml")
)


def test_every_experiment_composes_and_builds_its_model():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from apps.common.config import CONF_DIR, register_resolvers

    register_resolvers()
    assert {"ptrnet_hull50", "ptrnet_tsp10_cpu", "ptrnet_hull10_cpu", "ptrnet_delaunay5"} <= set(EXPERIMENTS)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name in EXPERIMENTS:
            cfg = compose("train", overrides=[f"experiment={name}"])
            model = instantiate(cfg.app.model)
            module = instantiate(cfg.app.module, model=model)
            assert module.task == cfg.app.data.task, name
            assert (cfg.app.monitor == "val/exact") == (cfg.app.data.task != "tsp"), name


def test_reinforce_state_survives_a_checkpoint():
    module = _module(task="tsp", objective="reinforce", reinforce={"baseline_size": 16, "n": 7})
    module._holdout = module._draw_holdout()
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = _module(task="tsp", objective="reinforce", reinforce={"baseline_size": 16})
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.reinforce_options["n"] == 7 and resumed._holdout_round == module._holdout_round
    assert torch.equal(resumed._holdout, module._holdout)

"""The seed-table tool: groups runs, splits PSSA runs into base and +PSSA rows, mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.common.summary import find_runs, main, summarise


def _run(folder: Path, acc: float, base_acc: float | None = None) -> Path:
    folder.mkdir(parents=True)
    metrics = {"test": {"test/acc": acc, "test/acc_rare": acc - 0.1, "test/kendall_tau": float("nan")}}
    if base_acc is not None:
        metrics.update(rounds=[{"round": 1}], base_test={"test/acc": base_acc})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_summary_groups_seeds_and_pssa_rows(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    for seed, (acc, base) in enumerate([(0.8, 0.7), (0.9, 0.8), (0.85, 0.75)]):
        _run(sweep / str(seed), acc, base)
    plain = _run(tmp_path / "at", 0.6)
    assert len(find_runs([sweep])) == 3
    table = summarise({"tnet": find_runs([sweep]), "at": [plain]})
    assert table["tnet: +PSSA"]["runs"] == 3
    assert table["tnet: +PSSA"]["acc"][0] == pytest.approx(0.85) and table["tnet: +PSSA"]["acc"][
        1
    ] == pytest.approx(0.05)
    assert table["tnet: base (round 1)"]["acc"][0] == pytest.approx(0.75)
    assert "kendall_tau" not in table["at"]
    main([f"tnet={sweep}", str(plain), "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert "| tnet: +PSSA | 3 | 0.850 ± 0.050 |" in out and "| at | 1 | 0.600 |" in out
    assert json.loads((tmp_path / "t.json").read_text())["at"]["runs"] == 1
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        find_runs([tmp_path / "empty"])


def test_summary_splits_a_sweep_by_a_config_key(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    for job, (attention, auc) in enumerate([("none", 50.0), ("csa", 60.0), ("none", 52.0), ("csa", 62.0)]):
        folder = sweep / str(job)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"test": {"test/AUC": auc}}))
        (folder / "config.yaml").write_text(f"app:\n  model:\n    attention: {attention}\n")
    main([f"bmn={sweep}", "--columns", "AUC", "--by", "app.model.attention"])
    out = capsys.readouterr().out
    assert (
        "| bmn: attention=none | 2 | 51.000 ± 1.414 |" in out
        and "| bmn: attention=csa | 2 | 61.000 ± 1.414 |" in out
    )


def test_summary_splits_by_a_group_choice_and_reads_fit_timing(tmp_path: Path, capsys):
    """`--by attention` finds the choice in the run's command-line overrides (config.yaml holds the
    instantiated group, not its name); `timing/ms_per_step` comes from the fit timing."""
    sweep = tmp_path / "sweep"
    for job, (attention, exact, ms) in enumerate(
        [("softmax", 0.5, 200.0), ("linear", 0.4, 100.0), ("softmax", 0.7, 220.0)]
    ):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        metrics = {"test": {"test/exact": exact}, "timing": {"ms_per_step": ms, "fit_seconds": 1.0}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "config.yaml").write_text("attention:\n  _target_: shared_attention.MultiHeadAttention\n")
        (folder / ".hydra" / "overrides.yaml").write_text(
            f"- app=ptrnet\n- attention={attention}\n- seed={job}\n"
        )
    main([f"hull={sweep}", "--columns", "exact,timing/ms_per_step", "--by", "attention"])
    out = capsys.readouterr().out
    assert "| hull: attention=softmax | 2 | 0.600 ± 0.141 | 210.000 ± 14.142 |" in out
    assert "| hull: attention=linear | 1 | 0.400 | 100.000 |" in out

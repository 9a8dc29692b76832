"""The seed-table script: mean ± std over run folders, and NMI against its permutation chance level."""

from __future__ import annotations

import json

import pytest


def test_table_mean_std_over_runs(tmp_path):
    from apps.hubertopic.summary import table

    runs = []
    for index, acc in enumerate((0.5, 0.7)):
        run = tmp_path / f"run{index}"
        run.mkdir()
        metrics = {"monitored": 3.0 + index, "test": {"test/speaker_acc": acc}}
        (run / "metrics.json").write_text(json.dumps(metrics))
        runs.append(run)
    rows = table({"A": runs}, ("speaker_acc", "best_val_mask_loss", "theme_acc"))
    assert rows["A"]["runs"] == 2
    assert rows["A"]["speaker_acc"][0] == pytest.approx(0.6)
    assert rows["A"]["speaker_acc"][1] == pytest.approx(0.1414, abs=1e-3)
    assert rows["A"]["best_val_mask_loss"][0] == pytest.approx(3.5)
    assert "theme_acc" not in rows["A"]


def test_nmi_chance_is_below_an_informative_labeling():
    from apps.hubertopic.summary import nmi_chance

    facts = {"speaker": [f"s{i % 8}" for i in range(160)]}
    topics = [i % 8 for i in range(160)]  # the speaker itself: NMI 1
    result = nmi_chance(topics, facts, permutations=50)["speaker"]
    assert result["observed"] == pytest.approx(1.0)
    assert 0.0 <= result["chance_mean"] <= result["chance_p95"] <= result["chance_max"] < 0.2

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


def _run(folder, test: dict, monitored=None, eval_folder: bool = False):
    folder.mkdir(parents=True)
    if eval_folder:  # apps.eval writes flat test/... keys
        (folder / "eval_metrics.json").write_text(json.dumps({"checkpoint": "x.ckpt", **test}))
    else:
        (folder / "metrics.json").write_text(json.dumps({"monitored": monitored, "test": test}))
    return folder


def test_paired_differences_by_position_and_eval_folders(tmp_path, capsys):
    from apps.hubertopic.summary import main, paired, table

    base = [
        _run(tmp_path / f"b{i}", {"test/theme_acc": a, "test/char_cer": c, "test/char_cer_weighted": c}, 3.0)
        for i, (a, c) in enumerate(((0.5, 0.6), (0.6, 0.6), (0.7, 0.5)))
    ]
    arm = [
        _run(
            tmp_path / f"a{i}",
            {"test/theme_acc": a, "test/char_cer": c, "test/char_cer_weighted": c},
            eval_folder=True,
        )
        for i, (a, c) in enumerate(((0.6, 0.7), (0.8, 0.5), (0.6, 0.6)))
    ]
    rows = paired({"B": base, "A": arm}, "B", ("theme_acc", "char_cer", "char_cer_weighted", "speaker_acc"))
    theme = rows["A"]["theme_acc"]
    assert theme["diffs"] == pytest.approx([0.1, 0.2, -0.1])
    assert theme["mean"] == pytest.approx(0.2 / 3) and theme["better"] == 2 and theme["n"] == 3
    assert theme["se"] == pytest.approx(0.1528 / 3**0.5, abs=1e-3)
    assert rows["A"]["char_cer"]["better"] == 1  # lower is better: only the second pair
    assert rows["A"]["char_cer_weighted"]["better"] == 1
    assert "speaker_acc" not in rows["A"]
    assert table({"A": arm}, ("theme_acc",))["A"]["theme_acc"][0] == pytest.approx(2.0 / 3)
    with pytest.raises(KeyError, match="--paired C"):
        paired({"B": base, "A": arm}, "C", ("theme_acc",))
    with pytest.raises(ValueError, match="by position"):
        paired({"B": base, "A": arm[:2]}, "B", ("theme_acc",))
    out = tmp_path / "summary.json"
    main(
        [
            "--columns",
            "theme_acc,char_cer",
            "--paired",
            "B",
            "--json",
            str(out),
            "B=" + ",".join(map(str, base)),
            "A=" + ",".join(map(str, arm)),
        ]
    )
    printed = capsys.readouterr().out
    assert "| A | +0.067 ± 0.088 (2/3) |" in printed
    assert json.loads(out.read_text())["paired"]["groups"]["A"]["char_cer"]["n"] == 3

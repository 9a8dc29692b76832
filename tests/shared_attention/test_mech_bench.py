"""The mechanism benchmark runs end to end on tiny sizes and writes its JSON and table."""

from __future__ import annotations

import json

from bench.mechanisms import MECHANISMS, main, markdown_table, sweep


def test_sweep_rows_and_skip_rule():
    import torch

    rows = sweep(
        ["linear", "power"],
        [16, 32],
        embed_dim=8,
        num_heads=2,
        device=torch.device("cpu"),
        repeats=1,
        # time is always measurable (a tiny case may grow the resident set by nothing), so the
        # seconds budget is what forces the skip deterministically
        max_gb=1e9,
        max_seconds=1e-9,
    )
    assert [(r["mechanism"], r["length"]) for r in rows] == [
        ("linear", 16),
        ("linear", 32),
        ("power", 16),
        ("power", 32),
    ]
    assert rows[0]["forward_s"] > 0 and rows[0]["forward_backward_s"] > 0
    assert "max-seconds" in rows[1]["skipped"]
    table = markdown_table(rows, [16, 32])
    assert table.splitlines()[2].startswith("| linear | ") and table.splitlines()[2].endswith(" | - |")


def test_main_writes_json(tmp_path):
    main(
        [
            "--out",
            str(tmp_path),
            "--lengths",
            "16",
            "--mechanisms",
            "mala",
            "sigmoid",
            "--embed-dim",
            "8",
            "--num-heads",
            "2",
            "--repeats",
            "1",
        ]
    )
    report = json.loads((tmp_path / "mechanisms_cpu.json").read_text())
    assert {r["mechanism"] for r in report["results"]} == {"mala", "sigmoid"}
    assert "torch" in report["machine"]
    assert (tmp_path / "mechanisms_cpu.md").is_file()
    assert set(MECHANISMS) >= {"softmax", "linear", "mala", "sigmoid", "rcmha", "ntk", "power"}

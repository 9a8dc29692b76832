"""The CSA benchmark runs both training loops (ours under Lightning, mmaction2's train_step) and
writes its JSON."""

from __future__ import annotations

import json
import sys


def test_bench_writes_both_throughputs(tmp_path, monkeypatch):
    from bench import csa

    out = tmp_path / "results"
    argv = [
        "bench.csa",
        "--out",
        str(out),
        "--temporal-dim",
        "16",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--batch",
        "2",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    csa.main()
    result = json.loads((out / "csa_cpu.json").read_text())
    speeds = result["videos_per_second"]
    assert set(speeds) == {"lightning_bmn", "lightning_bmn_csa", "mmaction2_bmn"}
    assert all(v > 0 for v in speeds.values()) and result["lightning_over_mmaction2"] > 0

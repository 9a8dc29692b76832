"""`python -m bench.kenet` runs end to end on a few documents and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench import kenet as bench_kenet


def test_bench_kenet_writes_step_times(tiny_encoder: str, tmp_path: Path):
    report = bench_kenet.main(
        [
            "--quick",
            "--variants",
            "default,linear",
            "--encoder-path",
            tiny_encoder,
            "--max-docs",
            "256",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    stored = json.loads((tmp_path / "out" / "kenet_cpu.json").read_text())
    assert stored["train_docs"] == 256 and [v["variant"] for v in stored["variants"]] == ["default", "linear"]
    for variant in report["variants"]:
        assert variant["train_step_s"] > 0 and variant["infer_batch_s"] > 0
        assert variant["steps_per_epoch"] == 4 and variant["trainable_parameters"] > 0
    default, linear = report["variants"]
    assert default["trainable_parameters"] > linear["trainable_parameters"]

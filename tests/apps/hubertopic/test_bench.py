"""The HuBERTopic benchmark runs every variant (torchaudio's recipe model, our Lightning module) on
the same tiny batches and writes its JSON and Markdown summary."""

from __future__ import annotations

import json
import sys

import torch


def test_bench_writes_throughputs(tmp_path, monkeypatch):
    from bench import hubertopic

    out = tmp_path / "results"
    argv = ["bench.hubertopic", "--out", str(out), "--batch", "2", "--min-seconds", "0.5"]
    argv += ["--max-seconds", "0.8", "--warmup", "1", "--steps", "1", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    try:
        hubertopic.main()
    finally:
        torch.set_num_threads(threads)
    result = json.loads((out / "hubertopic_cpu.json").read_text())
    speeds = result["audio_seconds_per_second"]
    assert set(speeds) == set(hubertopic.VARIANTS)
    assert all(v > 0 for v in speeds.values()) and result["lightning_over_recipe"] > 0
    assert "recipe_torchaudio" in (out / "hubertopic_cpu.md").read_text()


def test_hubert_loss_is_mean_masked_cross_entropy():
    from bench.hubertopic import hubert_loss

    logit_m = torch.randn(5, 11)
    expected = torch.nn.functional.cross_entropy(logit_m, torch.zeros(5, dtype=torch.long))
    penalty = torch.tensor(0.01)
    assert torch.allclose(hubert_loss(logit_m, torch.randn(3, 11), penalty), expected + 10 * penalty)

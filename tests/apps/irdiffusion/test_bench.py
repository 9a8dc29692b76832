"""The IR-Diffusion processor benchmark runs every variant on the base model and an SD-layout UNet."""

from __future__ import annotations

import json
import sys


def test_bench_times_every_variant(tmp_path, monkeypatch):
    from bench import irdiffusion

    out = tmp_path / "results"
    argv = ["bench.irdiffusion", "--out", str(out), "--width-divisor", "16", "--sizes", "16"]
    monkeypatch.setattr(sys, "argv", [*argv, "--repeats", "1", "--steps", "1"])
    irdiffusion.main()
    result = json.loads((out / "irdiffusion_cpu.json").read_text())
    cases = result["cases"]
    assert [(c["model"], c["size"], c["ir_layers"] == "all") for c in cases] == [
        ("base", 32, True),
        ("sd15_w16", 16, True),
        ("sd15_w16", 16, False),
    ]
    for case in cases:
        assert set(case["overhead_vs_plain"]) == set(irdiffusion.VARIANTS)
        assert case["overhead_vs_plain"]["plain"] == 1.0 and all(v > 0 for v in case["seconds"].values())
    # SD 1.5's layout: 16 transformer blocks (self + cross attention each); low-res: up_blocks.1 + mid
    assert cases[1]["attention_layers"] == 32 and cases[1]["ir_layers_enabled"] == 32
    assert cases[2]["ir_layers_enabled"] == 8
    assert "| sd15_w16 (float32) | 16 | low-res (8 / 32) |" in (out / "irdiffusion_cpu.md").read_text()


def test_bench_half_precision_without_the_base_model(tmp_path, monkeypatch):
    from bench import irdiffusion

    out = tmp_path / "results"
    argv = ["bench.irdiffusion", "--out", str(out), "--width-divisor", "16", "--sizes", "16", "--no-base"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--dtype", "bfloat16", "--name", "half", "--repeats", "1", "--steps", "1"]
    )
    irdiffusion.main()
    result = json.loads((out / "half.json").read_text())
    assert [c["model"] for c in result["cases"]] == ["sd15_w16", "sd15_w16"]
    assert "| sd15_w16 (bfloat16) | 16 |" in (out / "half.md").read_text()


def test_bench_generations_of_several_forwards_and_the_profile(tmp_path, monkeypatch):
    """`--generation-steps` times whole generations per forward; `--profile` writes where the time of
    plain and both goes (on CPU: self CPU time per operator)."""
    from bench import irdiffusion

    out = tmp_path / "results"
    argv = ["bench.irdiffusion", "--out", str(out), "--width-divisor", "16", "--sizes", "16", "--no-base"]
    options = ["--generation-steps", "2", "--profile", "--name", "gen", "--repeats", "1", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, *options])
    irdiffusion.main()
    result = json.loads((out / "gen.json").read_text())
    assert all(c["generation_steps"] == 2 for c in result["cases"])
    assert "| sd15_w16 (float32) | 16 | all (32 / 32) | 2 |" in (out / "gen.md").read_text()
    profile = json.loads((out / "gen_profile.json").read_text())
    assert profile["size"] == 16 and profile["ir_layers_enabled"] == 32
    for variant in ("plain", "both"):
        assert profile[variant]["wall_seconds"] > 0 and profile[variant]["device_busy_seconds"] is None
        ops = {row["op"] for row in profile[variant]["top_ops"]}
        assert any("scaled_dot_product" in op or op == "aten::bmm" for op in ops), ops
    both_calls = sum(r["calls"] for r in profile["both"]["top_ops"])
    assert both_calls > sum(r["calls"] for r in profile["plain"]["top_ops"])

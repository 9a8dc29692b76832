"""The one-line-per-case summary printed at the end of a device call (bench/device_summary.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_summary_lists_every_case(tmp_path: Path):
    tuning = {
        "block_sparse": [
            {
                "pattern": "window1024",
                "length": 16384,
                "backend": "flex",
                "forward_ms": 0.35,
                "forward_backward_ms": 1.4,
            },
            {
                "pattern": "window1024",
                "length": 16384,
                "backend": "triton",
                "block_m": 64,
                "block_n": 64,
                "forward_launch": {"num_stages": 3},
                "backward_launch": {"num_stages": 3},
                "error": "OutOfResources: shared memory",
            },
        ],
        "linear": [
            {"length": 4096, "causal": True, "backend": "triton", "config": {"chunk": 64}, "forward_ms": 0.2}
        ],
    }
    bench = {
        "block_sparse": [
            {
                "pattern": "power",
                "shape": [1, 16, 65536, 64],
                "backend": "triton",
                "forward_ms": 0.9,
                "forward_backward_ms": 5.7,
                "forward_tflops": 200.0,
                "peak_memory_mb": 1900,
            },
            {
                "pattern": "power",
                "shape": [1, 16, 65536, 64],
                "backend": "xformers",
                "unsupported": "not installed",
            },
        ],
        "linear": [],
    }
    (tmp_path / "kernel_tuning_cuda.json").write_text(json.dumps(tuning))
    (tmp_path / "kernels_cuda.json").write_text(json.dumps(bench))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_summary.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 5
    assert out[0].startswith("tune   4096 linear causal=True")
    assert "flex" in out[1] and "fwd  0.350" in out[1]
    assert "OutOfResources" in out[2] and "fwd    nan" in out[2]
    assert "200.0 TF/s" in out[3] and "mem 1900 MB" in out[3]
    assert "not installed" in out[4]

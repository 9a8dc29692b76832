"""The kernel benchmark's README tables, from the GPU report shipped in bench/results."""

from __future__ import annotations

import json
from pathlib import Path

from bench.kernels import markdown_tables

ROOT = Path(__file__).resolve().parents[2]


def test_tables_of_the_shipped_gpu_report():
    report = json.loads((ROOT / "bench/results/kernels_cuda.json").read_text())
    table = markdown_tables(report)
    rows = [line for line in table.splitlines() if line.startswith("| window1024 | 16384 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    by = {
        c["backend"]: c
        for c in report["block_sparse"]
        if c["pattern"] == "window1024" and c["shape"][2] == 16384
    }
    assert cells[3] == "–"  # xformers did not run on that machine
    assert cells[5] == f"{by['triton']['forward_ms']:.3f}"
    assert cells[6] == f"{by['sdpa']['forward_ms'] / by['triton']['forward_ms']:.1f}x"
    assert cells[7] == f"{by['triton']['forward_ms'] / by['flex']['forward_ms']:.2f}"
    assert "| causal | 65536 |" in table


def test_missing_backends_show_a_dash():
    report = {
        "machine": {"gpu": "test"},
        "block_sparse": [
            {
                "backend": "triton",
                "pattern": "p",
                "shape": [1, 1, 64, 16],
                "forward_ms": 1.0,
                "forward_backward_ms": 2.0,
            },
            {"backend": "flex", "pattern": "p", "shape": [1, 1, 64, 16], "unsupported": "no"},
            {
                "backend": "xformers",
                "pattern": "p",
                "shape": [1, 1, 64, 16],
                "unsupported": "out of GPU memory",
            },
        ],
    }
    row = next(line for line in markdown_tables(report).splitlines() if line.startswith("| p |"))
    assert "| – |" in row and "| 1.000 |" in row and "| OOM |" in row

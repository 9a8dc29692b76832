"""One line per measured case of a device run's JSON files (``kernel_tuning_cuda.json``,
``kernels_cuda*.json``) in a folder, for the end of a device call's output:
``python3 bench/device_summary.py OUT_DIR``. Standard library only (the device machine has no
project environment)."""

from __future__ import annotations

import json
import pathlib
import sys

NAN = float("nan")


def tuning_lines(report: dict) -> list[str]:
    lines = []
    for c in report.get("linear", []):
        lines.append(
            f"tune {c['length']:>6} linear causal={c['causal']!s:<5} {c['backend']:<13} {c['config']} "
            f"fwd {c.get('forward_ms', NAN):7.3f} fwd+bwd {c.get('forward_backward_ms', NAN):7.3f} "
            f"err {c.get('max_relative_error', 0):.1e} {c.get('error', '')[:80]}"
        )
    for c in report.get("block_sparse", []):
        launch = f"{c.get('block_m', '')}x{c.get('block_n', '')} {c.get('forward_launch', '')} {c.get('backward_launch', '')}"
        lines.append(
            f"tune {c['length']:>6} {c['pattern'][:18]:<18} {c['backend']:<6} {launch:<86} "
            f"fwd {c.get('forward_ms', NAN):6.3f} fwd+bwd {c.get('forward_backward_ms', NAN):6.3f} "
            f"err {c.get('max_abs_error', 0):.0e} {c.get('error', '')[:60]}"
        )
    return lines


def benchmark_lines(report: dict) -> list[str]:
    lines = []
    for c in report.get("block_sparse", []):
        length = c["shape"][2]
        if "forward_ms" in c:
            lines.append(
                f"{length:>6} {c['pattern']:<18} {c['backend']:<8} fwd {c['forward_ms']:8.3f} ms "
                f"fwd+bwd {c['forward_backward_ms']:8.3f} ms {c['forward_tflops']:6.1f} TF/s "
                f"err {c.get('max_abs_error_vs_reference', 0):.1e} mem {c.get('peak_memory_mb', NAN):.0f} MB"
            )
        else:
            lines.append(
                f"{length:>6} {c['pattern']:<18} {c['backend']:<8} {str(c.get('unsupported') or c.get('error'))[:120]}"
            )
    for c in report.get("linear", []):
        lines.append(
            f"{c['shape'][2]:>6} linear causal={c['causal']!s:<5} {c['backend']:<14} "
            f"fwd {c.get('forward_ms', NAN):8.3f} ms fwd+bwd {c.get('forward_backward_ms', NAN):8.3f} ms"
        )
    return lines


def main(folder: str) -> None:
    root = pathlib.Path(folder)
    for path in sorted(root.glob("kernel_tuning_cuda.json")):
        print("\n".join(tuning_lines(json.loads(path.read_text()))))
    for path in sorted(root.glob("kernels_cuda*.json")):
        print("\n".join(benchmark_lines(json.loads(path.read_text()))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results")

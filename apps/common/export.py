"""Export of app models to ONNX and TorchScript, with parity checks against the eager model."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


@dataclass
class ExportGraph:
    """One graph to export: a module, example inputs, and which input dimensions are dynamic.

    `dynamic_dims[i]` maps a dimension of input `i` to a name (`{0: "batch", 1: "length"}`); inputs
    sharing a name share a dimension. `check_inputs` are further input tuples (other batch sizes and
    lengths) on which the exported graph must still match the eager module.
    """

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: Sequence[str]
    output_names: Sequence[str]
    dynamic_dims: Sequence[dict[int, str]]
    check_inputs: list[tuple[torch.Tensor, ...]] = field(default_factory=list)


class ExportMismatchError(RuntimeError):
    """An exported graph disagrees with the eager model beyond tolerance."""


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, list | tuple) else (outputs,)


def _dynamic_shapes(graph: ExportGraph) -> tuple[dict[int, Any], ...]:
    dims: dict[str, Any] = {}
    spec = []
    for mapping in graph.dynamic_dims:
        spec.append({axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in mapping.items()})
    return tuple(spec)


def compare(
    name: str, expected: Sequence[torch.Tensor], actual: Sequence[Any], atol: float, rtol: float
) -> dict[str, Any]:
    """Compare outputs; returns per-output max abs error and whether all are within tolerance."""
    errors = []
    ok = len(expected) == len(actual)
    for out_expected, out_actual in zip(expected, actual):
        want = out_expected.detach().cpu().numpy()
        got = np.asarray(out_actual.detach().cpu().numpy() if torch.is_tensor(out_actual) else out_actual)
        if want.shape != got.shape:
            errors.append(float("inf"))
            ok = False
            continue
        if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
            same = bool(np.array_equal(want, got))
            errors.append(0.0 if same else float("inf"))
            ok &= same
            continue
        finite = np.isfinite(want)
        if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(want[~finite], got[~finite]):
            errors.append(float("inf"))
            ok = False
            continue
        diff = np.abs(want[finite] - got[finite].astype(want.dtype))
        errors.append(float(diff.max()) if diff.size else 0.0)
        ok &= bool(np.all(diff <= atol + rtol * np.abs(want[finite])))
    return {"graph": name, "max_abs_error": errors, "ok": bool(ok)}


def export_onnx(graph: ExportGraph, path: Path, opset: int) -> Path:
    program = torch.onnx.export(
        graph.module,
        graph.inputs,
        dynamo=True,
        dynamic_shapes=_dynamic_shapes(graph),
        input_names=list(graph.input_names),
        output_names=list(graph.output_names),
        opset_version=opset,
    )
    program.save(str(path))
    return path


def run_onnx(path: Path, graph: ExportGraph, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    feed = {
        name: tensor.detach().cpu().numpy()
        for name, tensor in zip(graph.input_names, inputs)
        if name in names
    }
    missing = set(names) - set(feed)
    if missing:
        raise ExportMismatchError(
            f"{path}: the ONNX graph expects inputs {sorted(missing)} that were not provided"
        )
    return session.run(None, feed)


def export_torchscript(graph: ExportGraph, path: Path) -> Path:
    traced = torch.jit.trace(graph.module, graph.inputs, check_trace=False, strict=False)
    torch.jit.save(traced, str(path))
    return path


def export_graphs(
    graphs: Sequence[ExportGraph],
    out_dir: Path,
    formats: Sequence[str],
    *,
    opset: int = 18,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Export every graph in every format and check it against eager on all its input sets.

    Returns a report (files, errors, timings). Raises `ExportMismatchError` if any check fails; the
    report is still returned through the exception's `report` attribute.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(
            f"export.format: unknown format(s) {sorted(unknown)}; expected onnx, torchscript or both"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"graphs": [], "ok": True, "atol": atol, "rtol": rtol}
    for graph in graphs:
        graph.module.eval()
        input_sets = [graph.inputs, *graph.check_inputs]
        with torch.no_grad():
            expected = [_as_tuple(graph.module(*inputs)) for inputs in input_sets]
        for fmt in formats:
            start = time.perf_counter()
            if fmt == "onnx":
                path = export_onnx(graph, out_dir / f"{graph.name}.onnx", opset)
                actual = [run_onnx(path, graph, inputs) for inputs in input_sets]
            else:
                path = export_torchscript(graph, out_dir / f"{graph.name}.pt")
                loaded = torch.jit.load(str(path))
                with torch.no_grad():
                    actual = [_as_tuple(loaded(*inputs)) for inputs in input_sets]
            checks = [compare(graph.name, want, got, atol, rtol) for want, got in zip(expected, actual)]
            entry = {
                "graph": graph.name,
                "format": fmt,
                "file": str(path),
                "seconds": round(time.perf_counter() - start, 3),
                "input_shapes": [[list(t.shape) for t in inputs] for inputs in input_sets],
                "max_abs_error": [max(check["max_abs_error"], default=0.0) for check in checks],
                "ok": all(check["ok"] for check in checks),
            }
            report["graphs"].append(entry)
            report["ok"] &= entry["ok"]
            log.info(
                "%s %s: %s, max |error| %s",
                graph.name,
                fmt,
                "ok" if entry["ok"] else "MISMATCH",
                entry["max_abs_error"],
            )
    if not report["ok"]:
        bad = [
            f"{g['graph']}.{g['format']} (max |error| {g['max_abs_error']})"
            for g in report["graphs"]
            if not g["ok"]
        ]
        error = ExportMismatchError(
            f"exported graphs differ from the eager model beyond atol={atol}, rtol={rtol}: " + ", ".join(bad)
        )
        error.report = report  # type: ignore[attr-defined]
        raise error
    return report

"""Tables of runs, mean ± std over seeds: ``python -m apps.common.summary [--columns a,b] [--by key]
NAME=RUN_OR_SWEEP_DIR ...`` (``python -m apps.absa.summary`` has the ABSA columns as default).

Every folder given (or found below it) with a ``metrics.json`` (or, from ``apps.eval``, an
``eval_metrics.json``) is one run; its ``test`` metrics are
read (``test/<column>``), and its fit timing as ``timing/fit_seconds``, ``timing/ms_per_step``. A PSSA run (``rounds`` in its metrics) contributes two rows, its base model
(round 1, ``base_test``) and the model after PSSA (``test``). ``--by app.model.attention`` splits the
runs of a group by that key of each run's ``config.yaml`` (a sweep over variants and seeds gives one
line per variant). Prints a Markdown table and, with ``--json``, writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

ABSA_COLUMNS = ("acc", "macro_f1", "acc_rare", "acc_medium", "acc_frequent", "acc_no_opinion", "kendall_tau")


def config_value(run: Path, key: str) -> str:
    """``key`` (dotted) of the run's resolved ``config.yaml``, else the value of a command-line
    override ``key=value`` (``.hydra/overrides.yaml``): config-group choices such as ``attention``."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(OmegaConf.load(run / "config.yaml"), key)
    if value is None or isinstance(value, (dict, list)) or OmegaConf.is_config(value):
        overrides = run / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            for item in OmegaConf.load(overrides):
                name, _, chosen = str(item).partition("=")
                if name.lstrip("+~") == key:
                    return chosen
    if value is None:
        raise KeyError(f"{run / 'config.yaml'}: no key {key!r} (nor a {key}= override)")
    return str(value)


METRICS_FILES = ("metrics.json", "eval_metrics.json")


def is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in METRICS_FILES)


def read_metrics(run: Path) -> dict[str, Any]:
    """A run's ``metrics.json`` (``apps.train``), or its ``eval_metrics.json`` (``apps.eval``: flat
    ``test/...`` keys) in the same form, ``{"test": {...}}``."""
    if (run / "metrics.json").is_file():
        return json.loads((run / "metrics.json").read_text())
    path = run / "eval_metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: neither metrics.json nor eval_metrics.json")
    flat = json.loads(path.read_text())
    return {
        "test": {k: v for k, v in flat.items() if k.startswith("test/")},
        "checkpoint": flat.get("checkpoint"),
    }


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders: the given folders that hold ``metrics.json`` (or an ``apps.eval`` folder's
    ``eval_metrics.json``), else those below them."""
    runs = []
    for path in paths:
        if is_run(path):
            runs.append(path)
        else:
            runs.extend(sorted({p.parent for name in METRICS_FILES for p in path.glob(f"*/{name}")}))
    if not runs:
        raise FileNotFoundError(
            f"no metrics.json or eval_metrics.json in or below {', '.join(map(str, paths))}"
        )
    return runs


def rows_of_run(run: Path, name: str | None, by: str | None = None) -> list[tuple[str, dict[str, float]]]:
    metrics = read_metrics(run)
    timing = {f"timing/{k}": v for k, v in (metrics.get("timing") or {}).items() if v is not None}
    test = {**(metrics.get("test") or {}), **timing}
    label = name or run.name
    if by is not None:
        label = f"{label}: {by.rsplit('.', 1)[-1]}={config_value(run, by)}"
    if metrics.get("rounds") is not None:
        return [(f"{label}: base (round 1)", metrics.get("base_test") or {}), (f"{label}: +PSSA", test)]
    return [(label, test)]


def parse_groups(specs: list[str]) -> dict[str, list[Path]]:
    """``NAME=DIR[,DIR...]`` or ``DIR`` arguments -> ``{name: run folders}`` (see :func:`find_runs`)."""
    groups: dict[str, list[Path]] = {}
    for spec in specs:
        name, _, dirs = spec.rpartition("=") if "=" in spec else ("", "", spec)
        paths = [Path(d).expanduser() for d in dirs.split(",")]
        groups[name or paths[0].name] = find_runs(paths)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(
    groups: dict[str, list[Path]], columns: tuple[str, ...] = ABSA_COLUMNS, by: str | None = None
) -> dict[str, dict[str, Any]]:
    """``{row: {column: (mean, std), "runs": n}}`` over the runs of each group."""
    collected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, int] = defaultdict(int)
    for name, runs in groups.items():
        for run in runs:
            for row, test in rows_of_run(run, name, by):
                counts[row] += 1
                for column in columns:
                    value = test.get(f"test/{column}", test.get(column))
                    if value is not None and not math.isnan(value):
                        collected[row][column].append(float(value))
    return {
        row: {"runs": counts[row], **{c: mean_std(v) for c, v in columns.items()}}
        for row, columns in collected.items()
    }


def markdown(table: dict[str, dict[str, Any]], columns: tuple[str, ...] = ABSA_COLUMNS) -> str:
    lines = [
        "| model | runs | " + " | ".join(columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for row, values in table.items():
        cells = []
        for column in columns:
            if column not in values:
                cells.append("—")
                continue
            mean, std = values[column]
            cells.append(f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {row} | {values['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, default_columns: tuple[str, ...] = ABSA_COLUMNS) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", default=",".join(default_columns), help="comma-separated test metrics")
    parser.add_argument(
        "--by", default=None, help="split each group by this config key (e.g. app.model.attention)"
    )
    parser.add_argument(
        "groups",
        nargs="+",
        help="NAME=DIR[,DIR...] or DIR: run folders or sweep folders (every subfolder with metrics.json)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args(argv)
    groups = parse_groups(args.groups)
    columns = tuple(c for c in args.columns.split(",") if c)
    table = summarise(groups, columns, args.by)
    print(markdown(table, columns))
    if args.json is not None:
        args.json.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

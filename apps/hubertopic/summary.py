"""HuBERT / HuBERTopic seed tables and NMI chance levels.

``python -m apps.hubertopic.summary HuBERT=run1,run2,run3 HuBERTopic=run4,run5,run6 [--chance]``
prints mean ± std over the runs of each group of the probe metrics in each run's ``metrics.json``
(``test/...``, written by the test loop after training; or an ``apps.eval`` folder's
``eval_metrics.json``) plus the best
``val/mask_loss`` (the checkpoint monitor); see ``apps.common.summary`` for the folder arguments.

``--paired NAME`` adds, for every other group, the paired differences group − NAME, run by run in
the order given (so list the runs of every group in the same seed order): mean ± standard error
and in how many pairs the group is better (lower is better for CER and losses: columns with a ``cer`` or ``loss`` part).

``--chance`` adds, for every run's topic labels (the hard LDA topics its data module built; they
depend on the run's seed through k-means and LDA), NMI against speaker / gender / theme with the
topic labels randomly permuted (``--permutations`` times): the mean and 95th percentile of that null
distribution, so that "NMI well above chance" can be judged (NMI of two independent labelings is
positive on a finite sample; it grows with the number of classes).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from apps.common.summary import markdown, mean_std, parse_groups, read_metrics

COLUMNS = (
    "speaker_acc",
    "gender_acc",
    "theme_acc",
    "char_cer",
    "nmi_topic_speaker",
    "nmi_topic_gender",
    "nmi_topic_theme",
)
FACTS = ("speaker", "gender", "theme")


def run_values(run: Path) -> dict[str, float]:
    metrics = read_metrics(run)
    values = {k.removeprefix("test/"): float(v) for k, v in (metrics.get("test") or {}).items()}
    if metrics.get("monitored") is not None:
        values["best_val_mask_loss"] = float(metrics["monitored"])
    return values


def table(groups: dict[str, list[Path]], columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in groups.items():
        per_run = [run_values(run) for run in runs]
        row: dict[str, Any] = {"runs": len(runs)}
        for column in columns:
            values = [v[column] for v in per_run if column in v and not math.isnan(v[column])]
            if values:
                row[column] = mean_std(values)
        rows[name] = row
    return rows


LOWER_IS_BETTER = ("cer", "loss")


def paired(
    groups: dict[str, list[Path]], base: str, columns: tuple[str, ...]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {column: {mean, se, better, n, diffs}}}``: each group's runs minus `base`'s runs,
    paired by position."""
    if base not in groups:
        raise KeyError(f"--paired {base}: no such group (groups: {', '.join(groups)})")
    base_values = [run_values(run) for run in groups[base]]
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for name, runs in groups.items():
        if name == base:
            continue
        if len(runs) != len(groups[base]):
            raise ValueError(
                f"--paired {base}: group {name} has {len(runs)} runs, {base} has {len(groups[base])}; "
                "pairs are taken by position"
            )
        values = [run_values(run) for run in runs]
        result[name] = {}
        for column in columns:
            diffs = [
                v[column] - b[column]
                for v, b in zip(values, base_values, strict=True)
                if column in v and column in b and not math.isnan(v[column] - b[column])
            ]
            if not diffs:
                continue
            mean, std = mean_std(diffs)
            lower = bool(set(column.split("_")) & set(LOWER_IS_BETTER))  # char_cer, char_cer_weighted
            result[name][column] = {
                "mean": mean,
                "se": std / math.sqrt(len(diffs)),
                "better": sum((d < 0) if lower else (d > 0) for d in diffs),
                "n": len(diffs),
                "diffs": diffs,
            }
    return result


def paired_markdown(rows: dict[str, dict[str, dict[str, Any]]], base: str, columns: tuple[str, ...]) -> str:
    lines = [f"| − {base} | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [
            f"{row[c]['mean']:+.3f} ± {row[c]['se']:.3f} ({row[c]['better']}/{row[c]['n']})"
            if c in row
            else ""
            for c in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def topic_labels_and_facts(run: Path) -> tuple[list[int], dict[str, list[str]]]:
    """The run's hard topic labels and facts for every utterance (its data module, from the cache)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = instantiate(cfg.app.data)
    datamodule.setup("test")
    theta = datamodule.topics.as_dict()
    utt_ids = sorted(u for u in theta if u in datamodule.meta)
    topics = [int(theta[u].argmax()) for u in utt_ids]
    facts = {name: [datamodule.meta[u].get(name) for u in utt_ids] for name in FACTS}
    return topics, {name: values for name, values in facts.items() if all(v is not None for v in values)}


def nmi_chance(
    topics: list[int], facts: dict[str, list[str]], permutations: int = 200, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Observed NMI and its null distribution under random permutations of the topic labels."""
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(seed)
    labels = np.asarray(topics)
    result = {}
    for name, values in facts.items():
        null = np.array(
            [normalized_mutual_info_score(values, rng.permutation(labels)) for _ in range(permutations)]
        )
        result[name] = {
            "observed": float(normalized_mutual_info_score(values, labels)),
            "chance_mean": float(null.mean()),
            "chance_p95": float(np.percentile(null, 95)),
            "chance_max": float(null.max()),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", default=",".join((*COLUMNS, "best_val_mask_loss")))
    parser.add_argument(
        "--paired", default=None, metavar="NAME", help="paired differences against group NAME (by position)"
    )
    parser.add_argument("--chance", action="store_true", help="NMI chance levels of every run's topics")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    parser.add_argument("groups", nargs="+", help="NAME=DIR[,DIR...] (run folders or folders of runs)")
    args = parser.parse_args(argv)
    groups = parse_groups(args.groups)
    columns = tuple(c for c in args.columns.split(",") if c)
    rows = table(groups, columns)
    print(markdown(rows, columns))
    output: dict[str, Any] = {"table": rows}
    if args.paired is not None:
        differences = paired(groups, args.paired, columns)
        output["paired"] = {"base": args.paired, "groups": differences}
        print("\n" + paired_markdown(differences, args.paired, columns))
    if args.chance:
        chance: dict[str, Any] = {}
        for runs in groups.values():
            for run in runs:
                chance[str(run)] = nmi_chance(*topic_labels_and_facts(run), permutations=args.permutations)
        output["nmi_chance"] = chance
        print(
            "\n| run | fact | NMI | chance mean | chance p95 | chance max |\n| --- | --- | --- | --- | --- | --- |"
        )
        for run, facts in chance.items():
            for fact, v in facts.items():
                print(
                    f"| {Path(run).name} | {fact} | {v['observed']:.3f} | {v['chance_mean']:.3f} | "
                    f"{v['chance_p95']:.3f} | {v['chance_max']:.3f} |"
                )
    if args.json is not None:
        args.json.write_text(json.dumps(output, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

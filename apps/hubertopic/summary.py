"""HuBERT / HuBERTopic seed tables and NMI chance levels.

``python -m apps.hubertopic.summary HuBERT=run1,run2,run3 HuBERTopic=run4,run5,run6 [--chance]``
prints mean ± std over the runs of each group of the probe metrics in each run's ``metrics.json``
(``test/...``, written by the test loop after training or by ``apps.eval``) plus the best
``val/mask_loss`` (the checkpoint monitor); see ``apps.common.summary`` for the folder arguments.

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

from apps.common.summary import markdown, mean_std, parse_groups

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
    metrics = json.loads((run / "metrics.json").read_text())
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

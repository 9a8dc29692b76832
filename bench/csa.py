"""CSA benchmark: training throughput (videos/s) of our Lightning module against mmaction2's own
training iteration on the same CPU, same BMN configuration, same files, side by side.

- ``lightning``: ``LocalizationDataModule`` + ``CSAModule`` (``BMNCSA``, attention ``none`` and
  ``csa``) under ``pytorch_lightning.Trainer.fit`` — data loading, forward, mmaction2's BMN loss,
  backward, Adam step, Lightning's loop.
- ``mmaction2``: mmaction2's ``ActivityNetDataset`` with its loading pipeline
  (``LoadLocalizationFeature``, ``GenerateLocalizationLabels``, ``PackLocalizationInputs``), mmengine's
  ``pseudo_collate`` DataLoader, and ``BMN.train_step`` with an mmengine ``OptimWrapper`` (Adam): the
  iteration mmengine's ``Runner`` executes.

Both read the same generated ActivityNet-format files (written at the benchmark's temporal scale, so
no rescaling on either side). Each side runs ``--steps`` training steps after one warm-up step;
throughput is videos per second over the timed steps; repeated ``--repeats`` times, the best kept.

``python -m bench.csa --out bench/results [--temporal-dim 32] [--steps 10] [--threads 1]`` (also
``make bench APP=csa``) writes ``csa_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine

log = logging.getLogger("bench.csa")

MODEL = {"num_samples": 16, "hidden_dim_1d": 128, "hidden_dim_2d": 64, "hidden_dim_3d": 256}


class _StepTimer:
    """Timestamps at the end of every training batch (Lightning callback)."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        outer = self

        class Callback(pl.Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                outer.stamps.append(time.perf_counter())

        self.stamps: list[float] = []
        self.callback = Callback()


def lightning_throughput(data_dir: Path, temporal_dim: int, batch: int, steps: int, attention: str) -> float:
    import pytorch_lightning as pl

    from apps.csa.data import LocalizationDataModule
    from apps.csa.model import BMNCSA
    from apps.csa.module import CSAModule

    datamodule = LocalizationDataModule(
        str(data_dir), generate=False, temporal_scale=temporal_dim, batch_size=batch, seed=0
    )
    model = BMNCSA(attention, temporal_dim=temporal_dim, **MODEL)
    module = CSAModule(model, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), plot_videos=0)
    timer = _StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer.callback],
    )
    trainer.fit(module, datamodule=datamodule)
    return steps * batch / (timer.stamps[-1] - timer.stamps[0])


def mmaction2_throughput(data_dir: Path, temporal_dim: int, batch: int, steps: int) -> float:
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import OptimWrapper

    from apps.csa import mm

    mm.import_mmaction()
    from mmaction.datasets import ActivityNetDataset
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")  # the pipeline's transform names are mmaction's registry entries

    dataset = ActivityNetDataset(
        ann_file=str(data_dir / "anet_anno_train.json"),
        pipeline=[
            {"type": "LoadLocalizationFeature"},
            {"type": "GenerateLocalizationLabels"},
            {"type": "PackLocalizationInputs", "keys": ("gt_bbox",), "meta_keys": ("video_name",)},
        ],
        data_prefix={"video": str(data_dir / "features")},
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        collate_fn=pseudo_collate,
        generator=torch.Generator().manual_seed(0),
    )
    model = mm.bmn_class()(
        temporal_dim=temporal_dim,
        boundary_ratio=0.5,
        num_samples_per_bin=3,
        feat_dim=400,
        soft_nms_alpha=0.4,
        soft_nms_low_threshold=0.5,
        soft_nms_high_threshold=0.9,
        post_process_top_k=100,
        loss_cls={"type": "BMNLoss"},
        **MODEL,
    )
    model.train()
    optim = OptimWrapper(torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    stamps = []
    for index, data in enumerate(loader):
        model.train_step(data, optim)
        stamps.append(time.perf_counter())
        if index >= steps:
            break
    return steps * batch / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--temporal-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from apps.csa.generate import GeneratorConfig, build_dataset

    results: dict[str, Any] = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "temporal_dim": args.temporal_dim,
        "batch": args.batch,
        "steps": args.steps,
        "model": MODEL,
        "videos_per_second": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        config = GeneratorConfig(
            n_train=args.batch * (args.steps + 2), n_val=4, n_test=4, temporal_scale=args.temporal_dim, seed=0
        )
        build_dataset(data_dir, config, workers=1)
        runs = {
            "lightning_bmn": lambda: lightning_throughput(
                data_dir, args.temporal_dim, args.batch, args.steps, "none"
            ),
            "lightning_bmn_csa": lambda: lightning_throughput(
                data_dir, args.temporal_dim, args.batch, args.steps, "csa"
            ),
            "mmaction2_bmn": lambda: mmaction2_throughput(
                data_dir, args.temporal_dim, args.batch, args.steps
            ),
        }
        for _ in range(args.repeats):
            for name, run in runs.items():
                value = run()
                log.info("%s: %.2f videos/s", name, value)
                best = results["videos_per_second"].get(name, 0.0)
                results["videos_per_second"][name] = round(max(best, value), 3)
    results["lightning_over_mmaction2"] = round(
        results["videos_per_second"]["lightning_bmn"] / results["videos_per_second"]["mmaction2_bmn"], 3
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"csa_{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s: %s", path, results["videos_per_second"])


if __name__ == "__main__":
    main()

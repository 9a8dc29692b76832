"""Pointer Networks benchmark: training throughput, greedy/beam inference throughput by n, and TSP
tour quality per second against LKH-3 (`elkai`) on the same machine.

`python -m bench.ptrnet --out bench/results [--quick] [--ckpt run/checkpoints/last.ckpt]` (also
`make bench APP=ptrnet`) writes `ptrnet_<device>.json`:

- `train`: supervised training samples/s (forward + backward + Adam step) for the paper's LSTM
  model and Kool et al.'s attention model, TSP, by n.
- `inference`: instances/s of greedy and beam (width 5) decoding by n and model.
- `tsp_quality`: with `--ckpt` (a TSP checkpoint), mean tour length, gap to the reference and
  seconds per instance of greedy, beam and sampling; always the same for LKH-3 (elkai, 1 and 10
  runs) and, for n <= 12, exact Held-Karp, on one set of random instances.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.ptrnet.data import collate_examples
from apps.ptrnet.decoding import beam_search, greedy_decode, sample_decode, tour_lengths
from apps.ptrnet.formats import Example
from apps.ptrnet.generate import HELD_KARP_MAX_N, tsp_target_lkh, tsp_targets_held_karp
from apps.ptrnet.metrics import tour_length
from apps.ptrnet.model import LSTMEncoder, PointerNet, TransformerEncoder
from bench.common import machine, median_time, sync
from shared_attention import MultiHeadAttention

log = logging.getLogger("bench.ptrnet")


def build(kind: str) -> PointerNet:
    """`paper`: LSTM 256 + LSTM decoder; `am`: 3-layer Transformer 128 + attention decoder (C = 10)."""
    if kind == "paper":
        return PointerNet(LSTMEncoder(embed_dim=256, hidden_dim=256), embed_dim=256)
    encoder = TransformerEncoder(
        embed_dim=128, num_layers=3, num_heads=8, ff_dim=512, attention=functools.partial(MultiHeadAttention)
    )
    return PointerNet(encoder, decoder="attention", decoder_heads=8, clip=10.0)


def tsp_batch(n: int, count: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Random uniform TSP instances with exact (n <= 12) or LKH-3 reference tours."""
    points = np.random.default_rng(seed).random((count, n, 2), dtype=np.float32)
    if n <= HELD_KARP_MAX_N:
        tours = tsp_targets_held_karp(points)
    else:
        tours = [tsp_target_lkh(p) for p in points]
    batch = collate_examples([Example(p, t, "tsp") for p, t in zip(points, tours)])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_step(model: PointerNet, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> None:
    """One supervised step: teacher-forced cross-entropy, backward, optimiser step."""
    logits = model(batch["points"], batch["lengths"], batch["target"])
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["target"].flatten(), ignore_index=-100
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bench_train(
    kinds: list[str], sizes: list[int], batch_size: int, repeats: int, device: torch.device
) -> list:
    rows = []
    for kind in kinds:
        for n in sizes:
            torch.manual_seed(0)
            model = build(kind).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            batch = tsp_batch(n, batch_size, seed=n, device=device)

            step = functools.partial(train_step, model, optimizer, batch)
            seconds = median_time(step, device, repeats)
            rows.append({"model": kind, "n": n, "batch": batch_size, "samples_per_s": batch_size / seconds})
            log.info("train %s n=%d: %.0f samples/s", kind, n, batch_size / seconds)
    return rows


def bench_inference(
    kinds: list[str], sizes: list[int], batch_size: int, repeats: int, device: torch.device
) -> list:
    rows = []
    for kind in kinds:
        torch.manual_seed(0)
        model = build(kind).to(device).eval()
        for n in sizes:
            points = torch.rand(batch_size, n, 2, generator=torch.Generator().manual_seed(n)).to(device)
            lengths = torch.full((batch_size,), n, dtype=torch.long, device=device)
            for name, fn in (
                ("greedy", functools.partial(greedy_decode, model, points, lengths, "tsp")),
                ("beam5", functools.partial(beam_search, model, points, lengths, "tsp", beam_width=5)),
            ):
                seconds = median_time(fn, device, repeats)
                rows.append(
                    {
                        "model": kind,
                        "decode": name,
                        "n": n,
                        "batch": batch_size,
                        "instances_per_s": batch_size / seconds,
                    }
                )
                log.info("inference %s %s n=%d: %.0f instances/s", kind, name, n, batch_size / seconds)
    return rows


def _load(ckpt: Path) -> PointerNet:
    from apps.export import load_model

    model, _ = load_model(ckpt)
    return model


def bench_quality(ckpt: Path | None, n: int, count: int, device: torch.device) -> dict[str, Any]:
    """Tour length, gap and time per instance of the model's decoders and of LKH-3 / Held-Karp."""
    points = np.random.default_rng(12345).random((count, n, 2), dtype=np.float32)
    rows: list[dict[str, Any]] = []
    reference = None
    if n <= HELD_KARP_MAX_N:
        start = time.perf_counter()
        exact = tsp_targets_held_karp(points)
        seconds = time.perf_counter() - start
        reference = np.array([tour_length(p, t) for p, t in zip(points, exact)])
        rows.append(
            {"solver": "held-karp", "length": float(reference.mean()), "s_per_instance": seconds / count}
        )
    if importlib.util.find_spec("elkai") is not None:
        for runs in (1, 10):
            start = time.perf_counter()
            tours = [tsp_target_lkh(p, runs=runs) for p in points]
            seconds = time.perf_counter() - start
            lengths = np.array([tour_length(p, t) for p, t in zip(points, tours)])
            if reference is None and runs == 10:
                reference = lengths
            rows.append(
                {
                    "solver": f"lkh3-elkai-runs{runs}",
                    "length": float(lengths.mean()),
                    "s_per_instance": seconds / count,
                }
            )
    else:
        log.warning("elkai is not installed: no LKH-3 comparison (pip install elkai)")
    if ckpt is not None:
        model = _load(ckpt).to(device)
        tensor = torch.from_numpy(points).to(device)
        lengths_in = torch.full((count,), n, dtype=torch.long, device=device)
        decoders = {
            "greedy": lambda: greedy_decode(model, tensor, lengths_in, "tsp"),
            "beam5": lambda: beam_search(model, tensor, lengths_in, "tsp", beam_width=5)[0],
            "beam10": lambda: beam_search(model, tensor, lengths_in, "tsp", beam_width=10)[0],
            "sample16": lambda: sample_decode(
                model, tensor, lengths_in, "tsp", 16, generator=torch.Generator(device=device).manual_seed(0)
            )[0],
        }
        for name, fn in decoders.items():
            sync(device)
            start = time.perf_counter()
            positions = fn()
            sync(device)
            seconds = time.perf_counter() - start
            lengths = tour_lengths(tensor, positions).cpu().numpy().astype(np.float64)
            rows.append(
                {
                    "solver": f"model-{name}",
                    "length": float(lengths.mean()),
                    "s_per_instance": seconds / count,
                }
            )
    if reference is not None:
        for row in rows:
            row["gap_percent"] = 100.0 * (row["length"] / float(reference.mean()) - 1.0)
    for row in rows:
        log.info(
            "quality n=%d %s: length %.4f, %.2e s/instance",
            n,
            row["solver"],
            row["length"],
            row["s_per_instance"],
        )
    return {"n": n, "instances": count, "checkpoint": str(ckpt) if ckpt else None, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--ckpt", type=Path, default=None, help="a TSP checkpoint for the quality comparison")
    parser.add_argument("--quality-n", type=int, default=10, help="n of the quality comparison")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a shared, busy CPU)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.ckpt is not None and not args.ckpt.is_file():
        raise SystemExit(f"--ckpt: no such checkpoint: {args.ckpt}")
    device = torch.device(args.device)
    sizes = [10, 20] if args.quick else [10, 20, 50]
    repeats = 2 if args.quick else 5
    kinds = ["paper", "am"]
    results = {
        "machine": machine(),
        "device": str(device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train": bench_train(kinds, sizes, 128, repeats, device),
        "inference": bench_inference(kinds, sizes, 64 if args.quick else 256, repeats, device),
        "tsp_quality": bench_quality(args.ckpt, args.quality_n, 100 if args.quick else 1000, device),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "cuda" if device.type == "cuda" else "cpu"
    path = args.out / f"ptrnet_{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()

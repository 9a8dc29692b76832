"""HuBERTopic benchmark: pretraining throughput (seconds of audio per second of training) of our
Lightning module against torchaudio's own HuBERT pretraining model, same CPU, same batches, side by side.

- ``recipe_torchaudio``: ``torchaudio.models.hubert_pretrain_model`` (the ``small`` size of
  ``conf/hubert_model/small.yaml``: 7-layer 128-channel conv front end, 4 × 128-wide Transformer
  layers), trained as torchaudio's HuBERT recipe trains it: its ``forward(waveforms, labels,
  audio_lengths)`` → ``(logit_m, logit_u, feature_penalty)``, the masked-prediction loss (summed
  cross-entropy of the masked-frame logits against column 0, unmasked weight 0, plus 10 × the
  feature penalty, normalised by the number of masked frames; written here), backward, AdamW step,
  in a plain Python loop.
- ``lightning_hubertopic``: ``HuBERTopicModule`` + ``HuBERTopic`` (the core's softmax attention
  swapped in, 10-topic head on the last layer, λ = 1) under ``pytorch_lightning.Trainer.fit``: the
  training step ``make train APP=hubertopic`` runs (forward, losses, logging, backward, AdamW).
- ``lightning_hubert``: the same module with λ = 0 (the app's HuBERT baseline).
- ``lightning_hubertopic_torchaudio_attn``: λ = 1 but torchaudio's own self-attention kept
  (isolates the cost of the attention swap).
- ``loop_hubertopic``: our model and ``HuBERTopicModule.losses`` in the same plain loop as the recipe
  (isolates Lightning's own overhead).

Every variant reads the same in-memory utterances (noise waveforms of 2.5–4 s at 16 kHz, the
training crop; random units and topics) through the same ``DataLoader`` and the app's ``collate``
(padding to the longest utterance, as in training). Each variant runs ``--warmup`` steps, then
``--steps`` timed steps; a step's time is the wall time between the ends of consecutive steps (data
collation included). Variants are interleaved over ``--repeats`` rounds so that a shared machine's
load hits all of them alike; each round gives each variant a median step time, and throughput =
audio seconds per batch / the best round's median (the round least slowed by other jobs; every
round's median and the median pooled over rounds are in the JSON too).

``python -m bench.hubertopic --out bench/results [--batch 8] [--steps 8] [--threads 1]`` (also
``make bench APP=hubertopic``) writes ``hubertopic_<device>.json`` and ``hubertopic_<device>.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bench.common import machine

log = logging.getLogger("bench.hubertopic")

SAMPLE_RATE = 16_000
# conf/hubert_model/small.yaml (the app's default size)
SMALL = {
    "conv_channels": 128,
    "embed_dim": 128,
    "num_layers": 4,
    "num_heads": 4,
    "ff_dim": 256,
    "pos_conv_kernel": 32,
    "pos_conv_groups": 8,
    "final_dim": 64,
}
NUM_CLASSES = 100
NUM_TOPICS = 10
LR = 5e-4


def make_items(count: int, min_seconds: float, max_seconds: float, seed: int = 0) -> list[dict[str, Any]]:
    """Utterance items as `UtteranceDataset` yields them: waveform, units at the model's frames, topic."""
    from apps.hubertopic.audio import model_frames

    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        fraction = torch.rand((), generator=generator).item()
        samples = int((min_seconds + fraction * (max_seconds - min_seconds)) * SAMPLE_RATE)
        items.append(
            {
                "utt_id": f"utt{index}",
                "waveform": 0.1 * torch.randn(samples, generator=generator),
                "units": torch.randint(0, NUM_CLASSES, (model_frames(samples),), generator=generator),
                "topic": torch.randint(0, NUM_TOPICS, (), generator=generator),
            }
        )
    return items


def loader(items: list[dict[str, Any]], batch: int) -> DataLoader:
    from apps.hubertopic.data import collate

    return DataLoader(items, batch_size=batch, shuffle=False, collate_fn=collate)


def hubert_loss(
    logit_m: torch.Tensor,
    logit_u: torch.Tensor,
    feature_penalty: torch.Tensor,
    *,
    unmasked_weight: float = 0.0,
) -> torch.Tensor:
    """HuBERT's pretraining loss as torchaudio's recipe defines it: cross-entropy (sum) of the masked
    frames' logits with the target at column 0, plus `unmasked_weight` × the same over unmasked frames,
    plus 10 × feature penalty × number of masked frames; divided by the number of masked frames."""
    targets = torch.zeros(logit_m.shape[0], dtype=torch.long, device=logit_m.device)
    loss = F.cross_entropy(logit_m, targets, reduction="sum")
    if unmasked_weight:
        targets_u = torch.zeros(logit_u.shape[0], dtype=torch.long, device=logit_u.device)
        loss = loss + unmasked_weight * F.cross_entropy(logit_u, targets_u, reduction="sum")
    size = max(logit_m.shape[0], 1)
    loss = loss + 10.0 * feature_penalty * size
    return loss / size


def our_model(torchaudio_attention: bool = False) -> torch.nn.Module:
    from apps.hubertopic.model import HuBERTopic
    from shared_attention import MultiHeadAttention

    attention = None if torchaudio_attention else functools.partial(MultiHeadAttention, backend="auto")
    return HuBERTopic(num_classes=NUM_CLASSES, num_topics=NUM_TOPICS, attention=attention, **SMALL)


def recipe_model() -> torch.nn.Module:
    """torchaudio's `hubert_pretrain_model` at the same size (built with the app's arguments, no
    swap, no topic head: `HuBERTopic(...).hubert` is exactly that torchaudio object)."""
    from apps.hubertopic.model import HuBERTopic

    model = HuBERTopic(num_classes=NUM_CLASSES, num_topics=0, attention=None, **SMALL).hubert
    assert type(model).__name__ == "HuBERTPretrainModel"
    return model


def _step_times(stamps: list[float], warmup: int) -> list[float]:
    """Times of the steps after the warm-up, from the timestamps at the end of every step."""
    return [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]


def recipe_steps(data: DataLoader, warmup: int, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = recipe_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    stamps = []
    for index, batch in enumerate(data):
        if index >= warmup + steps:
            break
        logit_m, logit_u, feature_penalty = model(batch["waveforms"], batch["units"], batch["lengths"])
        loss = hubert_loss(logit_m, logit_u, feature_penalty)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return _step_times(stamps, warmup)


def _module(topic_weight: float, torchaudio_attention: bool) -> Any:
    from apps.hubertopic.module import HuBERTopicModule

    torch.manual_seed(0)
    return HuBERTopicModule(
        our_model(torchaudio_attention),
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.01),
        topic_weight=topic_weight,
        plots=False,
    )


def loop_steps(data: DataLoader, warmup: int, steps: int) -> list[float]:
    module = _module(1.0, False).train()
    optimizer = module.configure_optimizers()
    stamps = []
    for index, batch in enumerate(data):
        if index >= warmup + steps:
            break
        loss = module.losses(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return _step_times(stamps, warmup)


def lightning_steps(
    data: DataLoader, warmup: int, steps: int, topic_weight: float, torchaudio_attention: bool = False
) -> list[float]:
    import pytorch_lightning as pl

    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

    module = _module(topic_weight, torchaudio_attention)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Stamp()],
    )
    trainer.fit(module, train_dataloaders=data)
    return _step_times(stamps, warmup)


VARIANTS: dict[str, Callable[[DataLoader, int, int], list[float]]] = {
    "recipe_torchaudio": recipe_steps,
    "lightning_hubertopic": lambda d, w, s: lightning_steps(d, w, s, 1.0),
    "lightning_hubert": lambda d, w, s: lightning_steps(d, w, s, 0.0),
    "lightning_hubertopic_torchaudio_attn": lambda d, w, s: lightning_steps(d, w, s, 1.0, True),
    "loop_hubertopic": loop_steps,
}


def summary_markdown(results: dict[str, Any]) -> str:
    speeds = results["audio_seconds_per_second"]
    base = speeds["recipe_torchaudio"]
    lines = [
        "# HuBERTopic pretraining throughput (CPU)",
        "",
        f"`python -m bench.hubertopic` — {results['machine']['cpu']}, {results['threads']} thread(s), "
        f"batch {results['batch']} of {results['min_seconds']}–{results['max_seconds']} s utterances "
        f"({results['audio_seconds_per_batch']:.1f} s of audio per batch), small model, "
        f"{results['repeats']} interleaved rounds of {results['warmup']} warm-up + {results['steps']} timed steps; "
        "step time = the best round's median (every round's median in the last column). The machine may "
        "have been shared: compare rows, not absolute values.",
        "",
        "| variant | median step (s) | audio s / s | vs recipe | round medians (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, value in speeds.items():
        lines.append(
            f"| {name} | {results['median_step_seconds'][name]:.3f} | {value:.2f} | {value / base:.3f} | "
            + ", ".join(f"{v:.3f}" for v in results["round_median_step_seconds"][name])
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-seconds", type=float, default=2.5)
    parser.add_argument("--max-seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first timed step needs a preceding step)")
    torch.set_num_threads(args.threads)
    names = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "recipe_torchaudio" not in names:
        parser.error(f"--variants: unknown {unknown} or recipe_torchaudio missing; known: {list(VARIANTS)}")

    # one batch per step; every variant sees the same batches in the same order
    items = make_items(args.batch * (args.warmup + args.steps), args.min_seconds, args.max_seconds)
    data = loader(items, args.batch)
    audio_seconds = [float(batch["lengths"].sum()) / SAMPLE_RATE for batch in loader(items, args.batch)][
        args.warmup :
    ]
    per_batch = statistics.mean(audio_seconds)
    times: dict[str, list[float]] = {name: [] for name in names}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeats):
        for name in names:
            step_times = VARIANTS[name](data, args.warmup, args.steps)
            times[name] += step_times
            round_medians[name].append(statistics.median(step_times))
            log.info("round %d %s: median step %.3f s", round_, name, round_medians[name][-1])
    # headline: each variant's best round (its median step), the round least hit by other jobs
    median = {name: min(values) for name, values in round_medians.items()}
    pooled = {name: statistics.median(values) for name, values in times.items()}
    speeds = {name: per_batch / value for name, value in median.items()}
    results: dict[str, Any] = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "min_seconds": args.min_seconds,
        "max_seconds": args.max_seconds,
        "audio_seconds_per_batch": round(per_batch, 3),
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "model": {**SMALL, "num_classes": NUM_CLASSES, "num_topics": NUM_TOPICS},
        "median_step_seconds": {name: round(value, 4) for name, value in median.items()},
        "round_median_step_seconds": {
            name: [round(v, 4) for v in values] for name, values in round_medians.items()
        },
        "pooled_median_step_seconds": {name: round(value, 4) for name, value in pooled.items()},
        "step_seconds": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "audio_seconds_per_second": {name: round(value, 3) for name, value in speeds.items()},
    }
    if "lightning_hubertopic" in speeds:
        results["lightning_over_recipe"] = round(
            speeds["lightning_hubertopic"] / speeds["recipe_torchaudio"], 3
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"hubertopic_{'cuda' if torch.cuda.is_available() else 'cpu'}"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(summary_markdown(results))
    log.info("wrote %s: %s", args.out / f"{stem}.json", results["audio_seconds_per_second"])


if __name__ == "__main__":
    main()

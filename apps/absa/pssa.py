"""Progressive self-supervised attention learning (PSSA; Tang et al., ACL 2019) as a training runner.

Rounds ``k = 1..K``: train a fresh model on the training set with the words extracted so far
replaced by ``<mask>`` (round 1 sees the original data, so it is the base model), select it on
validation, then for every training sentence whose attention entropy (over its not yet erased
context words, in bits) is below ``ε``, extract the most attended word: *active* if the model
classified the sentence correctly, *misleading* otherwise, and erase it for the next round. The final
stage trains a fresh model on the original data with the attention regulariser
``λ · Σ_i (α_i m_i − t_i)²`` (see ``apps.absa.module``), selects on validation and is tested.

Every stage lives in its own folder under the run (``round1/`` … ``final/``), and the extraction state
is saved after each round (``pssa_state.json``, atomic), so rerunning the same command in the same
run folder (``hydra.run.dir=...``) resumes: finished rounds are skipped, an interrupted stage continues
from its ``last.ckpt``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from apps.absa.data import MASK_ID, ABSADataModule
from apps.absa.model import span_masks
from apps.common.io import load_checkpoint, write_json

log = logging.getLogger(__name__)
STATE_FILE = "pssa_state.json"


def attention_entropy_bits(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row's weights renormalised over ``mask``; ``(B, L)`` -> ``(B,)``."""
    w = weights * mask.to(weights.dtype)
    w = w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return -(w * torch.log2(w.clamp(min=1e-12))).sum(dim=1)


@torch.no_grad()
def extract_round(
    model: torch.nn.Module, datamodule: ABSADataModule, entropy_threshold: float
) -> dict[str, Any]:
    """One PSSA extraction pass over the training split; updates each example's erased/active/
    misleading sets in place and returns the round's statistics."""
    model.eval()
    examples = datamodule.splits["train"]
    counts = Counter()
    active_words: Counter = Counter()
    misleading_words: Counter = Counter()
    for batch in datamodule.extraction_dataloader():
        logits, weights, _ = model(
            batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
        )
        _, _, context = span_masks(
            batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
        )
        candidates = context & (batch["tokens"] != MASK_ID)
        entropy = attention_entropy_bits(weights, candidates)
        position = weights.masked_fill(~candidates, -1.0).argmax(dim=1)
        correct = logits.argmax(dim=1) == batch["labels"]
        counts["sentences"] += len(correct)
        counts["train_correct"] += int(correct.sum())
        for row, index in enumerate(batch["index"].tolist()):
            if not bool(candidates[row].any()):
                counts["no_candidate"] += 1
                continue
            if float(entropy[row]) >= entropy_threshold:
                counts["high_entropy"] += 1
                continue
            example = examples[index]
            where = int(position[row])
            example.erased.add(where)
            if bool(correct[row]):
                example.active.add(where)
                active_words[example.words[where]] += 1
                counts["active"] += 1
            else:
                example.misleading.add(where)
                misleading_words[example.words[where]] += 1
                counts["misleading"] += 1
    stats = dict(counts)
    stats["train_acc_on_erased"] = counts["train_correct"] / max(1, counts["sentences"])
    stats["top_active"] = active_words.most_common(15)
    stats["top_misleading"] = misleading_words.most_common(15)
    return stats


class PSSARunner:
    """Runs PSSA's rounds and final stage through the shared training entry (``apps.train``).

    Args:
        rounds: extraction rounds K (the paper: 5).
        entropy_threshold: ε in bits; a sentence's word is extracted only when its attention entropy
            is below it (4.0 as in the official code).
        pssa_lambda: weight of the final stage's attention regulariser (0.1; 0.5 for restaurants in
            the official code).
        test_rounds: test every round's model too (round 1 is the base model; always tested).
        plot_sentences: validation sentences drawn in ``attention_before_after_pssa.png`` (base model
            vs final model attention); 0 disables the plot.
    """

    def __init__(
        self,
        rounds: int = 5,
        entropy_threshold: float = 4.0,
        pssa_lambda: float = 0.1,
        test_rounds: bool = False,
        plot_sentences: int = 8,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"app.runner.rounds must be >= 1, got {rounds}")
        if entropy_threshold <= 0 or pssa_lambda < 0:
            raise ValueError("app.runner.entropy_threshold must be > 0 and pssa_lambda >= 0")
        self.rounds = rounds
        self.entropy_threshold = entropy_threshold
        self.pssa_lambda = pssa_lambda
        self.test_rounds = test_rounds
        self.plot_sentences = plot_sentences

    # ------------------------------------------------------------------ state
    @staticmethod
    def _save_state(path: Path, datamodule: ABSADataModule, rounds: list[dict[str, Any]]) -> None:
        examples = datamodule.splits["train"]
        write_json(
            path,
            {
                "train_examples": len(examples),
                "rounds": rounds,
                "extracted": [
                    {
                        "erased": sorted(e.erased),
                        "active": sorted(e.active),
                        "misleading": sorted(e.misleading),
                    }
                    for e in examples
                ],
            },
        )

    @staticmethod
    def _load_state(path: Path, datamodule: ABSADataModule) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: unreadable PSSA state ({err.msg}); delete it to restart the rounds"
            ) from err
        examples = datamodule.splits["train"]
        if state.get("train_examples") != len(examples):
            raise ValueError(
                f"{path}: saved for {state.get('train_examples')} training examples, the data has {len(examples)}; "
                "use a new run folder for different data"
            )
        for example, saved in zip(examples, state["extracted"]):
            example.erased, example.active, example.misleading = (
                set(saved["erased"]),
                set(saved["active"]),
                set(saved["misleading"]),
            )
        log.info("PSSA: resuming after %d finished round(s) from %s", len(state["rounds"]), path)
        return list(state["rounds"])

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _stage_config(cfg: DictConfig, folder: Path, test: bool) -> DictConfig:
        stage = copy.deepcopy(cfg)
        last = folder / "checkpoints" / "last.ckpt"
        with open_dict(stage):
            stage.paths.output_dir = str(folder)
            stage.test = test
            stage.train = True
            stage.ckpt_path = str(last) if last.is_file() else None
        return stage

    def _fit_stage(
        self, cfg: DictConfig, datamodule: ABSADataModule, folder: Path, test: bool, **module_overrides: Any
    ) -> tuple[dict[str, Any], pl.LightningModule]:
        from apps.train import build_app, fit_and_test

        stage_cfg = self._stage_config(cfg, folder, test)
        pl.seed_everything(cfg.seed, workers=True)
        _, module = build_app(stage_cfg, datamodule, **module_overrides)
        results = fit_and_test(stage_cfg, datamodule, module)
        best = results.get("best_checkpoint")
        if best:
            state = load_checkpoint(best)["state_dict"]
            module.load_state_dict(state)
        return results, module

    def _plot_before_after(self, root: Path, datamodule: ABSADataModule, final: torch.nn.Module) -> None:
        """Validation sentences shaded by the base model's (round 1) and the final model's attention."""
        from apps.absa.plots import plot_attention
        from apps.export import load_model

        base_metrics = root / "round1" / "metrics.json"
        best = json.loads(base_metrics.read_text()).get("best_checkpoint") if base_metrics.is_file() else None
        if not best or not Path(best).is_file() or self.plot_sentences <= 0:
            return
        base, _ = load_model(best)
        examples = datamodule.splits["val"][: self.plot_sentences]
        batch = next(iter(datamodule.val_dataloader()))
        rows, tags = [], []
        with torch.no_grad():
            outputs = [
                model.eval()(batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"])
                for model in (base, final)
            ]
        for row, example in enumerate(examples):
            for tag, (logits, weights, _) in zip(("before", "after"), outputs):
                rows.append((example, weights[row, : len(example.words)].tolist(), int(logits[row].argmax())))
                tags.append(tag)
        path = plot_attention(rows, root / "attention_before_after_pssa.png", tags)
        log.info("wrote %s", path)

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        root = Path(cfg.paths.output_dir)
        datamodule: ABSADataModule = instantiate(cfg.app.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        state_path = root / STATE_FILE
        rounds = self._load_state(state_path, datamodule)
        base: dict[str, Any] | None = None
        base_file = root / "round1" / "metrics.json"
        if base_file.is_file():
            base = json.loads(base_file.read_text()).get("test")
        for k in range(len(rounds) + 1, self.rounds + 1):
            datamodule.use_erasure = True
            test = k == 1 or self.test_rounds
            results, module = self._fit_stage(cfg, datamodule, root / f"round{k}", test, pssa_lambda=0.0)
            if k == 1:
                base = results.get("test")
            stats = extract_round(module.model, datamodule, self.entropy_threshold)
            stats.update(round=k, monitored=results.get("monitored"), test=results.get("test"))
            rounds.append(stats)
            self._save_state(state_path, datamodule, rounds)
            log.info(
                "PSSA round %d: val %s %.4f, extracted %d active / %d misleading (%d above ε)",
                k,
                cfg.app.monitor,
                results.get("monitored") or float("nan"),
                stats.get("active", 0),
                stats.get("misleading", 0),
                stats.get("high_entropy", 0),
            )
        datamodule.use_erasure = False
        results, final = self._fit_stage(
            cfg, datamodule, root / "final", cfg.test, pssa_lambda=self.pssa_lambda
        )
        self._plot_before_after(root, datamodule, final.model)
        summary = {
            **results,
            "base_test": base,
            "rounds": rounds,
            "supervised_examples": sum(1 for e in datamodule.splits["train"] if e.active or e.misleading),
        }
        write_json(root / "metrics.json", summary)
        return summary

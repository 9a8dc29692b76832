"""Pointer Networks data: generated sets with exact labels, or files in the paper's line format."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from apps.common.data import SplitLoaders, seeded_loader
from apps.ptrnet.decoding import targets_to_positions
from apps.ptrnet.formats import Example, normalize_task, read_examples
from apps.ptrnet.generate import build_dataset

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class PointerDataset(Dataset):
    """A list of `Example`s (points + 0-based target indices)."""

    def __init__(self, examples: list[Example], source: str) -> None:
        if not examples:
            raise ValueError(f"{source}: no examples")
        self.examples = examples
        self.source = source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def collate_examples(examples: list[Example]) -> dict[str, Any]:
    """Pad a list of examples into a batch.

    Returns `points (B, N, 2)` (zeros past each length), `lengths (B,)`, `target (B, T)` pointer
    positions (point i at i + 1, end symbol 0, padding -100) and the raw `examples` for metrics.
    """
    lengths = torch.tensor([ex.n for ex in examples], dtype=torch.long)
    points = torch.zeros(len(examples), int(lengths.max()), 2)
    for row, ex in enumerate(examples):
        points[row, : ex.n] = torch.from_numpy(ex.points)
    target = targets_to_positions([list(ex.target) for ex in examples], pad=IGNORE_INDEX)
    return {"points": points, "lengths": lengths, "target": target, "examples": examples}


def _size_tag(n: int | tuple[int, int] | list[int]) -> str:
    if isinstance(n, int):
        return str(n)
    low, high = n
    return f"{low}-{high}"


class PointerDataModule(SplitLoaders, pl.LightningDataModule):
    """Train/val/test splits for convex hull, Delaunay or TSP.

    Each split comes from `<split>_file` when given (the paper's format, `.gz` accepted); otherwise
    a set with exact labels is generated once into `data_dir` and reused (see `generate.build_dataset`).
    `n_*` is a point count or a `[min, max]` range; batches mix sizes with padding.
    """

    def __init__(
        self,
        task: str = "convex_hull",
        data_dir: str = "data",
        n_train: int | list[int] = 10,
        n_val: int | list[int] | None = None,
        n_test: int | list[int] | None = None,
        train_size: int = 10_000,
        val_size: int = 1_000,
        test_size: int = 1_000,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        generation_workers: int = 2,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        self.task = normalize_task(task)
        self.data_dir = Path(data_dir)
        self.sizes = {
            "train": n_train,
            "val": n_val if n_val is not None else n_train,
            "test": n_test if n_test is not None else (n_val if n_val is not None else n_train),
        }
        self.counts = {"train": train_size, "val": val_size, "test": test_size}
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.generation_workers = generation_workers
        self.seed = seed
        self.datasets: dict[str, PointerDataset] = {}

    def split_path(self, split: str) -> Path:
        """Where the generated `split` lives (or the user's file for it)."""
        if self.files[split]:
            return Path(self.files[split]).expanduser()
        size = self.sizes[split]
        split_seed = self.seed + {"train": 0, "val": 1, "test": 2}[split]
        name = f"{self.task}_n{_size_tag(size)}_{split}_{self.counts[split]}_s{split_seed}.txt"
        return self.data_dir / "ptrnet" / name

    def prepare_data(self) -> None:
        """Build (or check) the splits the running trainer function needs: `trainer.test` on a
        released file does not generate training data."""
        state = getattr(getattr(self, "trainer", None), "state", None)
        function = getattr(getattr(state, "fn", None), "value", None)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(function, ("train", "val", "test")):
            self._ensure(split)

    def _ensure(self, split: str) -> Path:
        path = self.split_path(split)
        if self.files[split]:
            if not path.is_file():
                raise FileNotFoundError(f"app.data.{split}_file: no such file: {path}")
            return path
        size = self.sizes[split]
        size = size if isinstance(size, int) else (int(size[0]), int(size[1]))
        split_seed = self.seed + {"train": 0, "val": 1, "test": 2}[split]
        return build_dataset(
            path, self.task, size, self.counts[split], split_seed, workers=self.generation_workers
        )

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            if split not in self.datasets:
                path = self._ensure(split)
                self.datasets[split] = PointerDataset(read_examples(path, self.task), str(path))
                log.info("%s: %d examples from %s", split, len(self.datasets[split]), path)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        return seeded_loader(
            dataset,
            collate_examples,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
        )

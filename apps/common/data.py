"""Data-loading pieces shared by the apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on `(seed, epoch)`.

    Lightning calls `set_epoch` at the start of every epoch, so a run resumed from a checkpoint sees
    the same order of examples as the run that was never interrupted, without touching the global RNG.
    """

    def __init__(self, data: Sized, seed: int, shuffle: bool = True) -> None:
        self.data = data
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(len(self.data)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.data), generator=generator).tolist())


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for a DataLoader, so creating iterators never consumes the global RNG."""
    return torch.Generator().manual_seed(int(seed))


def seeded_loader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Any],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose order depends only on `(seed, epoch)` and which never touches the global RNG."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(dataset, seed, shuffle=shuffle),
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=loader_generator(seed),
        persistent_workers=num_workers > 0,
    )


class SplitLoaders:
    """Lightning's three dataloader hooks for a datamodule that defines `_loader(split, shuffle)`."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)  # type: ignore[attr-defined]

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)  # type: ignore[attr-defined]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)  # type: ignore[attr-defined]

"""Scenes, captions and the LightningDataModule of the IR-Diffusion app.

Captions come from a closed word vocabulary: "a <colour> <shape> and a <colour> <shape> ...". The
vocabulary is fixed by the generator config, so the model's text encoder and any evaluation agree
on token ids without a tokenizer file.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from apps.common.data import SplitLoaders, seeded_loader
from apps.irdiffusion.generate import (
    COLOURS,
    PATTERNS,
    SHAPES,
    GeneratorConfig,
    build_dataset,
    load_split,
    render_references,
)

log = logging.getLogger(__name__)

PAD, NULL = "<pad>", "<null>"


class Vocabulary:
    """Word <-> id over the caption words; id 0 pads, id 1 is the empty (unconditional) caption."""

    def __init__(self, num_colours: int, num_shapes: int, max_subjects: int) -> None:
        self.num_colours = num_colours
        self.num_shapes = num_shapes
        self.max_subjects = max_subjects
        self.words = [PAD, NULL, "a", "and", *list(COLOURS)[:num_colours], *SHAPES[:num_shapes]]
        self.index = {word: i for i, word in enumerate(self.words)}
        self.max_length = 4 * max_subjects - 1

    def __len__(self) -> int:
        return len(self.words)

    def identity_phrase(self, identity: int) -> list[str]:
        return ["a", list(COLOURS)[identity // self.num_shapes], SHAPES[identity % self.num_shapes]]

    def encode_subjects(self, identities: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption ids `(L,)` naming `identities` in order, and `(len, 2)` positions of each subject's words."""
        words: list[str] = []
        positions = []
        for i, identity in enumerate(identities):
            if i:
                words.append("and")
            start = len(words)
            words.extend(self.identity_phrase(int(identity)))
            positions.append((start + 1, start + 2))
        if len(words) > self.max_length:
            raise ValueError(f"caption of {len(identities)} subjects exceeds max_length={self.max_length}")
        ids = [self.index[w] for w in words] + [0] * (self.max_length - len(words))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long).view(-1, 2)

    def null_caption(self) -> torch.Tensor:
        ids = torch.zeros(self.max_length, dtype=torch.long)
        ids[0] = self.index[NULL]
        return ids

    def decode(self, ids: torch.Tensor) -> str:
        return " ".join(self.words[i] for i in ids.tolist() if i > 1)


class SceneDataset(Dataset):
    """One item per scene: image in [-1, 1], caption ids, subject layout (see `generate.py`).

    With `references` (the generator config) each item also has single-subject reference images of
    its subjects (`ref_image (K, 3, S, S)` in [-1, 1], `ref_labels (K, S, S)`, `ref_boxes (K, 4)`),
    rendered on the fly from a random stream fixed by `reference_seed` and the scene index.
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor],
        vocab: Vocabulary,
        indices: torch.Tensor | None = None,
        references: GeneratorConfig | None = None,
        reference_seed: int = 0,
    ) -> None:
        self.data = data
        self.vocab = vocab
        self.indices = torch.arange(data["images"].shape[0]) if indices is None else indices
        self.references = references
        self.reference_seed = reference_seed

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i = int(self.indices[item])
        identity = self.data["identity"][i].long()
        order = self.data["order"][i].long()
        present = identity >= 0
        k = identity.numel()
        # subjects in caption order: caption_rank[p] = subject at caption position p
        ranked = sorted(range(int(present.sum())), key=lambda s: int(order[s]))
        tokens, positions = self.vocab.encode_subjects([int(identity[s]) for s in ranked])
        subject_tokens = torch.full((k, 2), -1, dtype=torch.long)
        for p, s in enumerate(ranked):
            subject_tokens[s] = positions[p]
        return {
            "image": self.data["images"][i].float() / 127.5 - 1.0,
            "tokens": tokens,
            "labels": self.data["labels"][i].long(),
            "boxes": self.data["boxes"][i].long(),
            "identity": identity,
            "pattern": self.data["pattern"][i].long(),
            "subject_tokens": subject_tokens,
            "num_subjects": present.sum(),
            "index": torch.tensor(i),
            **(self._references(i) if self.references is not None else {}),
        }

    def _references(self, i: int) -> dict[str, torch.Tensor]:
        assert self.references is not None
        rng = np.random.default_rng([self.reference_seed, i])
        refs = render_references(
            rng, self.references, self.data["identity"][i].numpy(), self.data["pattern"][i].numpy()
        )
        return {
            "ref_image": torch.from_numpy(refs["ref_images"]).float() / 127.5 - 1.0,
            "ref_labels": torch.from_numpy(refs["ref_labels"]).long(),
            "ref_boxes": torch.from_numpy(refs["ref_boxes"]).long(),
        }


class IRDiffusionDataModule(SplitLoaders, pl.LightningDataModule):
    """Train/val: all scenes; test: the first `test_scenes` scenes with exactly `eval_subjects` subjects.

    `references=True` adds single-subject reference images of each scene's subjects to the train and
    validation items (for `module.reference_training`).
    """

    def __init__(
        self,
        data_dir: str,
        generator: dict[str, Any] | None = None,
        generate: bool = True,
        batch_size: int = 32,
        eval_batch_size: int = 16,
        test_scenes: int = 64,
        eval_subjects: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        references: bool = False,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.references = references
        self.generator = GeneratorConfig(**dict(generator or {}))
        self.generate = generate
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.test_scenes = test_scenes
        if not 2 <= eval_subjects <= self.generator.max_subjects:
            raise ValueError(
                f"data.eval_subjects must be in [2, {self.generator.max_subjects}], got {eval_subjects}"
            )
        self.eval_subjects = eval_subjects
        self.num_workers = num_workers
        self.seed = seed
        self.vocab = Vocabulary(
            self.generator.num_colours, self.generator.num_shapes, self.generator.max_subjects
        )
        self.splits: dict[str, SceneDataset] = {}

    def model_overrides(self) -> dict[str, Any]:
        return {
            "vocab_size": len(self.vocab),
            "max_length": self.vocab.max_length,
            "image_size": self.generator.image_size,
            "num_identities": self.generator.num_identities,
            "num_patterns": len(PATTERNS),
            "generator": asdict(self.generator),
        }

    def use_model_config(self, model_config: dict[str, Any]) -> None:
        """Evaluate a checkpoint on the data it was trained for (vocabulary and image size)."""
        stored = model_config.get("generator")
        if stored:
            # sizes, seed and repeats do not change the vocabulary, the image size or the test scenes
            keep = {
                k: getattr(self.generator, k) for k in ("n_train", "n_val", "n_test", "seed", "repeat_prob")
            }
            self.generator = GeneratorConfig(**{**stored, **keep})
            self.vocab = Vocabulary(
                self.generator.num_colours, self.generator.num_shapes, self.generator.max_subjects
            )

    def prepare_data(self) -> None:
        if self.generate:
            build_dataset(self.data_dir, self.generator)

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split in self.splits:
                continue
            data = load_split(self.data_dir / f"{split}.pt", self.generator.max_subjects)
            indices = None
            if split == "test":
                counts = (data["identity"] >= 0).sum(dim=1)
                chosen = torch.nonzero(counts == self.eval_subjects).flatten()
                indices = chosen[: self.test_scenes]
                if indices.numel() < self.test_scenes:
                    log.warning(
                        "test split has only %d scenes of %d subjects", indices.numel(), self.eval_subjects
                    )
            refs = self.generator if self.references and split != "test" else None
            offset = {"train": 1, "val": 2}.get(split, 0)
            self.splits[split] = SceneDataset(
                data, self.vocab, indices, refs, self.generator.seed * 10 + offset
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            self.setup(split)
        size = self.batch_size if split == "train" else self.eval_batch_size
        return seeded_loader(
            self.splits[split],
            torch.utils.data.default_collate,
            batch_size=size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
        )

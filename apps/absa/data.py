"""ABSA data: tokenisation with character offsets, the word vocabulary, PSSA erasure state, and the
LightningDataModule (generated SemEval-style set by default, or real SemEval / Twitter / TNet files).

A training example carries three token sets used by PSSA (Tang et al. 2019): ``erased`` (replaced by
``<mask>`` in the next round's input), ``active`` and ``misleading`` (the attention supervision of the
final stage). The datamodule holds them per training example index, so the PSSA runner can update
them between rounds without rebuilding anything else.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from apps.absa.formats import POLARITIES, AspectExample, read_examples

log = logging.getLogger(__name__)

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK)
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
TOKEN_PATTERN = re.compile(r"[\w']+|[^\w\s]")

# Buckets of the opinion word's training frequency for the accuracy split (upper bounds, inclusive).
FREQUENCY_BUCKETS: tuple[tuple[str, int], ...] = (("unseen", 0), ("rare", 10), ("medium", 100))
FREQUENT = "frequent"
NO_OPINION = "no_opinion"


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Lower-cased word and punctuation tokens with their character offsets ``(token, start, end)``."""
    return [(m.group().lower(), m.start(), m.end()) for m in TOKEN_PATTERN.finditer(text)]


@dataclass
class EncodedExample:
    """One aspect example as token ids, the aspect's token span ``[aspect_start, aspect_end)``."""

    words: list[str]
    tokens: list[int]
    aspect_start: int
    aspect_end: int
    label: int
    sentence_id: str
    opinion: str | None = None
    opinion_bucket: str = NO_OPINION
    erased: set[int] = field(default_factory=set)
    active: set[int] = field(default_factory=set)
    misleading: set[int] = field(default_factory=set)


def aspect_token_span(example: AspectExample, spans: Sequence[tuple[str, int, int]]) -> tuple[int, int]:
    """Token indices ``[first, last + 1)`` of the tokens overlapping the aspect's characters."""
    inside = [i for i, (_, start, end) in enumerate(spans) if start < example.end and end > example.start]
    if not inside:
        raise ValueError(
            f"sentence {example.sentence_id}: aspect {example.term!r} at characters "
            f"{example.start}:{example.end} covers no token of {example.text!r}"
        )
    return inside[0], inside[-1] + 1


class Vocabulary:
    """Word <-> id map; ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<mask>``."""

    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {list(words[:3])}")
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary has duplicate words")

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_freq: int = 1) -> Vocabulary:
        counts = Counter(word for words in sentences for word in words)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_freq and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Sequence[str]) -> list[int]:
        return [self.index.get(word, UNK_ID) for word in words]


def opinion_bucket(opinion: str | None, train_counts: Counter) -> str:
    """Frequency bucket of an opinion word by its count among training examples' opinion words."""
    if opinion is None:
        return NO_OPINION
    count = train_counts.get(opinion, 0)
    for name, upper in FREQUENCY_BUCKETS:
        if count <= upper:
            return name
    return FREQUENT


def encode_examples(
    examples: Sequence[AspectExample], vocab: Vocabulary | None, max_length: int | None = None
) -> tuple[list[EncodedExample], list[list[str]]]:
    """Tokenise and encode; with ``vocab=None`` only the words are filled (ids come later)."""
    encoded, all_words = [], []
    for example in examples:
        spans = tokenize(example.text)
        start, end = aspect_token_span(example, spans)
        words = [token for token, _, _ in spans]
        if max_length is not None and len(words) > max_length:
            # keep a window around the aspect so it is never cut off
            left = max(0, min(start - (max_length - (end - start)) // 2, len(words) - max_length))
            words = words[left : left + max_length]
            start, end = start - left, min(end - left, max_length)
        all_words.append(words)
        encoded.append(
            EncodedExample(
                words=words,
                tokens=vocab.encode(words) if vocab is not None else [],
                aspect_start=start,
                aspect_end=end,
                label=POLARITIES.index(example.polarity),
                sentence_id=example.sentence_id,
                opinion=example.opinion,
            )
        )
    return encoded, all_words


class AspectDataset(Dataset):
    """Encoded examples; ``use_erasure`` replaces erased tokens by ``<mask>`` (PSSA rounds)."""

    def __init__(self, examples: list[EncodedExample], use_erasure: bool = False) -> None:
        self.examples = examples
        self.use_erasure = use_erasure

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        tokens = list(example.tokens)
        if self.use_erasure:
            for position in example.erased:
                tokens[position] = MASK_ID
        return {"index": index, "tokens": tokens, "example": example}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad to the longest example: ``tokens (B, L)``, ``lengths``, aspect span, labels and the
    PSSA ``active``/``misleading`` masks ``(B, L)``."""
    length = max(len(item["tokens"]) for item in items)
    batch = len(items)
    tokens = torch.full((batch, length), PAD_ID, dtype=torch.long)
    active = torch.zeros(batch, length, dtype=torch.bool)
    misleading = torch.zeros(batch, length, dtype=torch.bool)
    for row, item in enumerate(items):
        tokens[row, : len(item["tokens"])] = torch.tensor(item["tokens"], dtype=torch.long)
        example: EncodedExample = item["example"]
        for position in example.active:
            active[row, position] = True
        for position in example.misleading:
            misleading[row, position] = True
    examples = [item["example"] for item in items]
    return {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "tokens": tokens,
        "lengths": torch.tensor([len(item["tokens"]) for item in items], dtype=torch.long),
        "aspect_start": torch.tensor([e.aspect_start for e in examples], dtype=torch.long),
        "aspect_end": torch.tensor([e.aspect_end for e in examples], dtype=torch.long),
        "labels": torch.tensor([e.label for e in examples], dtype=torch.long),
        "active": active,
        "misleading": misleading,
    }


def split_by_sentence(
    examples: Sequence[AspectExample], fraction: float, seed: int
) -> tuple[list[AspectExample], list[AspectExample]]:
    """Carve a validation split from training examples, keeping all aspects of a sentence together."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"app.data.val_fraction must be in (0, 1), got {fraction}")
    sentence_ids = sorted({e.sentence_id for e in examples})
    rng = np.random.default_rng(seed)
    rng.shuffle(sentence_ids)
    n_val = max(1, round(fraction * len(sentence_ids)))
    val_ids = set(sentence_ids[:n_val])
    train = [e for e in examples if e.sentence_id not in val_ids]
    val = [e for e in examples if e.sentence_id in val_ids]
    return train, val


class ABSADataModule(pl.LightningDataModule):
    """Aspect sentiment data: the generated default set, or real files (``train_file`` etc.).

    Without ``train_file`` the default dataset is generated into ``data_dir`` (SemEval XML) on first
    use. The validation split is carved from training (``val_fraction``, by sentence) unless a
    ``val_file`` is given; the test split is never used for selection. The vocabulary is built from
    the training split, or taken from a trained model's config (``vocab``) for evaluation.
    """

    def __init__(
        self,
        data_dir: str,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        format: str = "auto",
        generator: dict[str, Any] | None = None,
        val_fraction: float = 0.1,
        min_word_freq: int = 1,
        max_length: int | None = 80,
        vocab: list[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).expanduser()
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.format = format
        self.generator = dict(generator or {})
        self.val_fraction = val_fraction
        self.min_word_freq = min_word_freq
        self.max_length = max_length
        self.vocab: Vocabulary | None = Vocabulary(vocab) if vocab is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.use_erasure = False
        self.splits: dict[str, list[EncodedExample]] = {}

    # ----------------------------------------------------------------- files
    def _default_files(self) -> tuple[Path, Path]:
        from apps.absa.generate import GeneratorConfig, build_dataset

        config = GeneratorConfig(**self.generator)
        build_dataset(self.data_dir, config)
        return self.data_dir / "train.xml", self.data_dir / "test.xml"

    def _files(self) -> tuple[Path, Path | None, Path]:
        if self.train_file is None:
            train, test = self._default_files()
            test_path = Path(self.test_file).expanduser() if self.test_file else test
            return train, (Path(self.val_file).expanduser() if self.val_file else None), test_path
        if self.test_file is None:
            raise ValueError("app.data.test_file is required when app.data.train_file is set")
        return (
            Path(self.train_file).expanduser(),
            Path(self.val_file).expanduser() if self.val_file else None,
            Path(self.test_file).expanduser(),
        )

    def prepare_data(self) -> None:
        self._files()

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_path, val_path, test_path = self._files()
        train_raw = read_examples(train_path, self.format)
        if val_path is not None:
            val_raw = read_examples(val_path, self.format)
        else:
            train_raw, val_raw = split_by_sentence(train_raw, self.val_fraction, self.seed)
        test_raw = read_examples(test_path, self.format)
        train, train_words = encode_examples(train_raw, None, self.max_length)
        if self.vocab is None:
            self.vocab = Vocabulary.build(train_words, self.min_word_freq)
        opinion_counts = Counter(e.opinion for e in train_raw if e.opinion is not None)
        for example in train:
            example.tokens = self.vocab.encode(example.words)
        self.splits = {"train": train}
        for name, raw in (("val", val_raw), ("test", test_raw)):
            self.splits[name], _ = encode_examples(raw, self.vocab, self.max_length)
        for examples in self.splits.values():
            for example in examples:
                example.opinion_bucket = opinion_bucket(example.opinion, opinion_counts)
        log.info(
            "ABSA data: %d train / %d val / %d test aspect examples, vocabulary %d (from %s)",
            len(self.splits["train"]),
            len(self.splits["val"]),
            len(self.splits["test"]),
            len(self.vocab),
            train_path,
        )

    def model_overrides(self) -> dict[str, Any]:
        """What the model must know about the data: the vocabulary (its size sets the embeddings)."""
        self.prepare_data()
        self.setup("fit")
        assert self.vocab is not None
        return {"vocab": list(self.vocab.words)}

    def use_model_config(self, model_config: dict[str, Any]) -> None:
        """Evaluate a trained model: encode with the vocabulary stored in its config."""
        vocab = model_config.get("vocab")
        if vocab is None:
            raise KeyError("the checkpoint's model config has no `vocab`; it was not trained by the ABSA app")
        self.vocab = Vocabulary(vocab)
        self.splits = {}

    # ----------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool, batch_size: int, erasure: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            AspectDataset(self.splits[split], use_erasure=erasure),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
            generator=generator if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size, erasure=self.use_erasure)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def extraction_dataloader(self) -> DataLoader:
        """The training split in order, with the current erasures (PSSA extraction)."""
        return self._loader("train", False, self.eval_batch_size, erasure=True)


def load_word_vectors(path: str | Path, vocab: Sequence[str], weight: torch.Tensor) -> int:
    """Copy vectors of a GloVe-style text file (``word v1 ... vD`` per line) into ``weight (V, D)``
    for the words of ``vocab``; returns how many were found. Errors name the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"app.module.word_vectors: no such file: {path}")
    index = {word: i for i, word in enumerate(vocab) if word not in SPECIALS}
    found = 0
    with path.open("r", encoding="utf-8", errors="replace") as handle, torch.no_grad():
        for line_no, line in enumerate(handle, 1):
            parts = line.rstrip().split(" ")
            if len(parts) == 2 and line_no == 1:
                continue  # word2vec-style header "count dim"
            word = parts[0]
            if word not in index:
                continue
            if len(parts) - 1 != weight.shape[1]:
                raise ValueError(
                    f"{path}:{line_no}: vector of {word!r} has {len(parts) - 1} values, the embeddings "
                    f"have {weight.shape[1]} (set app.model.embed_dim)"
                )
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: not a number in the vector of {word!r}") from err
            weight[index[word]] = torch.tensor(values, dtype=weight.dtype)
            found += 1
    return found


def encoder_word_vectors(
    encoder_path: str, vocab: Sequence[str], weight: torch.Tensor, batch_size: int = 256
) -> int:
    """Static word vectors from a local pretrained encoder (the stand-in for GloVe when no vector
    file is at hand): each word alone, ``[CLS] word [SEP]``, mean of its last hidden states over the
    word's pieces. Fills ``weight (V, D)`` for every non-special word; returns how many."""
    from apps.common.pretrained import PretrainedEncoder, load_tokenizer, pad_ids

    tokenizer = load_tokenizer(encoder_path)
    encoder = PretrainedEncoder(encoder_path).eval()
    if encoder.hidden_size != weight.shape[1]:
        raise ValueError(
            f"app.module.word_vectors=encoder:{encoder_path}: the encoder gives {encoder.hidden_size}-d "
            f"vectors, the embeddings have {weight.shape[1]} (set app.model.embed_dim={encoder.hidden_size})"
        )
    words = [(i, w) for i, w in enumerate(vocab) if w not in SPECIALS]
    with torch.no_grad():
        for start in range(0, len(words), batch_size):
            chunk = words[start : start + batch_size]
            ids = [tokenizer(w, add_special_tokens=True)["input_ids"] for _, w in chunk]
            tokens, mask = pad_ids(ids)
            states = encoder(tokens, mask)
            pieces = mask.clone()
            pieces[:, 0] = False
            pieces[torch.arange(len(ids)), mask.sum(1) - 1] = False  # drop [CLS] and [SEP]
            pieces = pieces.unsqueeze(-1).to(states.dtype)
            vectors = (states * pieces).sum(1) / pieces.sum(1).clamp(min=1.0)
            weight[[i for i, _ in chunk]] = vectors.to(weight.dtype)
    return len(words)

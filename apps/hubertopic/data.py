"""LightningDataModule of HuBERTopic: corpus → pseudo-labels → topics → batches.

`prepare_data` builds (or reuses) everything the training needs, each step cached on disk:

1. the corpus: the espeak-ng default (`corpus.build_corpus`) into `<data_dir>/espeak`, or a real one
   (`corpus_dir`: LibriSpeech layout; `manifest`/`valid_manifest`: fairseq TSVs);
2. unit labels per utterance id: MFCC k-means (iteration 1) or k-means of a layer of a trained
   model's features (iteration 2, `labels.source=model labels.checkpoint=...`);
3. LDA topics over the unit documents.

Splits: `train` / `val` for pretraining (the default corpus ships `train.tsv` / `valid.tsv`; a
LibriSpeech folder is split by a hash of the utterance id), and `test`: every utterance with its
speaker / gender / theme / transcript, for the frozen-feature probes run by `trainer.test`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from apps.common.data import SplitLoaders, seeded_loader
from apps.hubertopic.audio import MFCC_HOP, MODEL_HOP, align_labels, load_audio, mfcc_features, model_frames
from apps.hubertopic.corpus import CORPUS_DIR, CorpusConfig, build_corpus
from apps.hubertopic.formats import Utterance, read_librispeech, read_manifest
from apps.hubertopic.labels import (
    ORACLE_FIELDS,
    TOPIC_DOCUMENTS,
    TOPIC_UNITS,
    Topics,
    UnitLabels,
    compute_features,
    fit_segment_units,
    fit_topics,
    fit_units,
    metadata_topics,
)

log = logging.getLogger(__name__)

TOPIC_TARGETS = ("hard", "soft")
SEGMENT_DEFAULTS = {"frames": 40, "hop": 5, "pool": 4, "num_classes": 1000, "n_mfcc": 13}
"""Windows for `topics.units=segments`: 40 frames of 10 ms (400 ms) every 50 ms, pooled to 10 steps
of 13 speaker-normalised MFCCs, clustered into 1000 acoustic words."""
TOPIC_DEFAULTS = {
    "num_topics": 10,
    "ngram": 1,
    "targets": "hard",
    "max_iter": 50,
    "documents": "counts",
    "oracle": None,
    "units": "labels",
}


def topic_config(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """One topic model's settings (`app.data.topics`, or its `second`) with defaults filled in and
    every value checked; errors name the config `key`."""
    cfg = {**TOPIC_DEFAULTS, **raw}
    cfg["segments"] = {**SEGMENT_DEFAULTS, **dict(cfg.get("segments") or {})}
    choices = {"documents": TOPIC_DOCUMENTS, "units": TOPIC_UNITS, "targets": TOPIC_TARGETS}
    for name, allowed in choices.items():
        if cfg[name] not in allowed:
            raise ValueError(f"{key}.{name}: expected one of {allowed}, got {cfg[name]!r}")
    unknown = sorted(set(cfg["segments"]) - set(SEGMENT_DEFAULTS))
    if unknown:
        raise ValueError(f"{key}.segments: unknown key(s) {unknown}; expected {sorted(SEGMENT_DEFAULTS)}")
    if cfg["oracle"] is not None and cfg["oracle"] not in ORACLE_FIELDS:
        raise ValueError(f"{key}.oracle: expected null or one of {ORACLE_FIELDS}, got {cfg['oracle']!r}")
    if int(cfg["num_topics"]) < 1:
        raise ValueError(f"{key}.num_topics: expected at least 1, got {cfg['num_topics']!r}")
    return cfg


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hash_fraction(utt_id: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{utt_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class UtteranceDataset(Dataset):
    """Items `{utt_id, waveform (T,), units (F,), topic[, topic2]}`; training items are cropped to
    `max_samples` at a 20 ms frame boundary so the units stay aligned. `topics2` / `topic_targets2`
    are the labels of a second topic model (`topics.second`), if any."""

    def __init__(
        self,
        utterances: list[Utterance],
        units: dict[str, np.ndarray] | None,
        unit_hop: int,
        topics: dict[str, np.ndarray] | None,
        topic_targets: str,
        max_samples: int | None,
        seed: int,
        topics2: dict[str, np.ndarray] | None = None,
        topic_targets2: str = "hard",
    ) -> None:
        self.utterances = utterances
        self.topics2 = topics2
        self.topic_targets2 = topic_targets2
        self.units = units
        self.unit_hop = unit_hop
        self.topics = topics
        self.topic_targets = topic_targets
        self.max_samples = max_samples
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        waveform = load_audio(utt.path)
        item: dict[str, Any] = {"utt_id": utt.utt_id}
        units = None
        if self.units is not None:
            units = torch.from_numpy(align_labels(self.units[utt.utt_id], len(waveform), self.unit_hop))
        if self.max_samples is not None and len(waveform) > self.max_samples:
            frames = model_frames(len(waveform)) - model_frames(self.max_samples)
            rng = np.random.default_rng([self.seed, self.epoch, index])
            start = int(rng.integers(frames + 1))
            waveform = waveform[start * MODEL_HOP : start * MODEL_HOP + self.max_samples]
            if units is not None:
                units = units[start : start + model_frames(len(waveform))]
        item["waveform"] = waveform
        if units is not None:
            item["units"] = units
        if self.topics is not None:
            item["topic"] = _topic_target(self.topics[utt.utt_id], self.topic_targets)
        if self.topics2 is not None:
            item["topic2"] = _topic_target(self.topics2[utt.utt_id], self.topic_targets2)
        return item


def _topic_target(theta: np.ndarray, targets: str) -> Tensor:
    """The argmax topic (`hard`) or the whole distribution θ (`soft`)."""
    return torch.tensor(int(theta.argmax())) if targets == "hard" else torch.from_numpy(theta).float()


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad to the longest waveform: `waveforms (B, T)`, `lengths (B,)`, `units (B, F)` (0 on padding),
    `topics (B,)` or `(B, T_topics)` (and `topics2` from a second topic model), `utt_ids`."""
    lengths = torch.tensor([len(item["waveform"]) for item in items])
    waveforms = torch.zeros(len(items), int(lengths.max()))
    for row, item in enumerate(items):
        waveforms[row, : len(item["waveform"])] = item["waveform"]
    batch: dict[str, Any] = {
        "utt_ids": [item["utt_id"] for item in items],
        "waveforms": waveforms,
        "lengths": lengths,
    }
    if "units" in items[0]:
        units = torch.zeros(len(items), model_frames(int(lengths.max())), dtype=torch.long)
        for row, item in enumerate(items):
            units[row, : len(item["units"])] = item["units"]
        batch["units"] = units
    if "topic" in items[0]:
        batch["topics"] = torch.stack([item["topic"] for item in items])
    if "topic2" in items[0]:
        batch["topics2"] = torch.stack([item["topic2"] for item in items])
    return batch


class HuBERTopicDataModule(SplitLoaders, pl.LightningDataModule):
    """Corpus, pseudo-labels and topics for HuBERT / HuBERTopic pretraining, and the probe set.

    Args:
        data_dir: cache folder (corpus, labels, topics).
        generator: knobs of `corpus.CorpusConfig` for the default espeak-ng corpus.
        corpus_dir: a LibriSpeech-layout folder instead of the default corpus.
        manifest, valid_manifest: fairseq TSV manifests instead (no probe metadata unless
            `corpus_dir` is also given, which then serves the probes).
        labels: `source` (`mfcc` | `model`), `num_classes` (K), `n_mfcc`, `checkpoint` and `layer`
            (iteration 2: a trained model and its 1-based Transformer layer), `max_fit_frames`.
        topics: `num_topics` (T), `ngram`, `targets` (`hard` | `soft`), `max_iter` (LDA),
            `documents` (`counts` | `speaker_residual`: each utterance's units minus its speaker's
            usual profile, see `labels.speaker_residual`), `oracle` (null, or `speaker` | `gender`
            | `theme`: one-hot topics from that metadata field instead of LDA, a diagnostic upper
            bound; `num_topics` must equal the number of its values), `units` (`labels`: the
            documents' words are the pseudo-labels; `segments`: acoustic words, k-means of windows
            of speaker-normalised MFCCs, sized by `segments` = `frames`, `hop`, `pool`,
            `num_classes`, `n_mfcc`; see `labels.fit_segment_units`), and `second` (null, or a
            mapping of any of these keys: a second topic model whose labels train a second topic
            head, e.g. `{units: labels, documents: counts}` beside acoustic-word topics; unset keys
            follow the first model).
        max_seconds: training crop length (validation and probes use whole utterances).
        valid_fraction: validation share when splitting a LibriSpeech folder by utterance id.
    """

    def __init__(
        self,
        data_dir: str,
        generator: dict[str, Any] | None = None,
        corpus_dir: str | None = None,
        manifest: str | None = None,
        valid_manifest: str | None = None,
        labels: dict[str, Any] | None = None,
        topics: dict[str, Any] | None = None,
        max_seconds: float | None = 4.0,
        valid_fraction: float = 0.1,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.generator = dict(generator or {})
        self.corpus_dir = corpus_dir
        self.manifest = manifest
        self.valid_manifest = valid_manifest
        self.label_cfg = {
            "source": "mfcc",
            "num_classes": 100,
            "n_mfcc": 13,
            "checkpoint": None,
            "layer": -1,
            "max_fit_frames": 200_000,
            **dict(labels or {}),
        }
        if self.label_cfg["source"] not in ("mfcc", "model"):
            raise ValueError(
                f"app.data.labels.source: expected mfcc or model, got {self.label_cfg['source']!r}"
            )
        if self.label_cfg["source"] == "model" and not self.label_cfg["checkpoint"]:
            raise ValueError(
                "app.data.labels.source=model needs app.data.labels.checkpoint=<iteration-1 ckpt>"
            )
        raw_topics = dict(topics or {})
        second = raw_topics.pop("second", None)
        self.topic_cfg = topic_config(raw_topics, "app.data.topics")
        self.second_cfg: dict[str, Any] | None = None
        if second is not None:
            if not hasattr(second, "keys"):
                raise ValueError(
                    f"app.data.topics.second: expected null or a mapping of topic-model keys, got {second!r}"
                )
            second = dict(second)
            unknown = sorted(set(second) - set(TOPIC_DEFAULTS) - {"segments"})
            if unknown:
                raise ValueError(
                    f"app.data.topics.second: unknown key(s) {unknown}; expected some of "
                    f"{sorted((*TOPIC_DEFAULTS, 'segments'))}"
                )
            # unset keys follow the main topic model (`segments` key by key)
            segments = {**self.topic_cfg["segments"], **dict(second.pop("segments", None) or {})}
            self.second_cfg = topic_config(
                {**self.topic_cfg, **second, "segments": segments}, "app.data.topics.second"
            )
        self.max_samples = None if max_seconds is None else int(max_seconds * 16_000)
        self.valid_fraction = valid_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, list[Utterance]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.transcripts: dict[str, str] = {}
        self.units: UnitLabels | None = None
        self.topics: Topics | None = None
        self.topics2: Topics | None = None

    # ------------------------------------------------------------------ corpus
    @property
    def default_corpus(self) -> bool:
        return self.corpus_dir is None and self.manifest is None

    def _read_splits(self) -> dict[str, list[Utterance]]:
        if self.default_corpus:
            root = self.data_dir / "espeak"
            build_corpus(root, CorpusConfig(**self.generator))
            everything = read_librispeech(root / CORPUS_DIR)
            valid_ids = {u.utt_id for u in read_manifest(root / "valid.tsv")}
        elif self.manifest is not None:
            train = read_manifest(self.manifest)
            valid = read_manifest(self.valid_manifest) if self.valid_manifest else []
            probes = read_librispeech(self.corpus_dir) if self.corpus_dir else []
            if not valid:
                valid = [u for u in train if _hash_fraction(u.utt_id, "valid") < self.valid_fraction]
                train = [u for u in train if _hash_fraction(u.utt_id, "valid") >= self.valid_fraction]
            return {"train": train, "val": valid, "test": probes}
        else:
            everything = read_librispeech(self.corpus_dir)
            valid_ids = {
                u.utt_id for u in everything if _hash_fraction(u.utt_id, "valid") < self.valid_fraction
            }
        return {
            "train": [u for u in everything if u.utt_id not in valid_ids],
            "val": [u for u in everything if u.utt_id in valid_ids],
            "test": everything,
        }

    def _all_utterances(self) -> list[Utterance]:
        seen: dict[str, Utterance] = {}
        for split in self.splits.values():
            for utt in split:
                seen.setdefault(utt.utt_id, utt)
        return [seen[k] for k in sorted(seen)]

    # ------------------------------------------------------------------ labels and topics
    def _label_dir(self) -> Path:
        utts = self._all_utterances()
        identity = [[u.utt_id, str(u.path)] for u in utts]
        source = dict(self.label_cfg)
        if source["source"] == "mfcc":
            source.pop("checkpoint"), source.pop("layer")
        else:
            ckpt = Path(source["checkpoint"])
            source["checkpoint"] = [str(ckpt.resolve()), ckpt.stat().st_mtime_ns if ckpt.is_file() else None]
        return self.data_dir / "labels" / _digest({"utts": identity, "labels": source, "seed": self.seed})

    def _featurizer(self):
        if self.label_cfg["source"] == "mfcc":
            n_mfcc = int(self.label_cfg["n_mfcc"])
            return (lambda path: mfcc_features(load_audio(path), n_mfcc).numpy()), MFCC_HOP
        from apps.export import load_model

        model, _ = load_model(self.label_cfg["checkpoint"])
        layer = int(self.label_cfg["layer"])

        @torch.no_grad()
        def featurize(path: Path) -> np.ndarray:
            hidden, _ = model.extract_features(load_audio(path)[None])
            return hidden[layer - 1 if layer > 0 else layer][0].numpy()

        return featurize, MODEL_HOP

    def prepare_data(self) -> None:
        self.splits = self._read_splits()
        self._labels_and_topics()

    def _labels_and_topics(self) -> None:
        folder = self._label_dir()
        units_path = folder / "units.npz"
        utts = self._all_utterances()
        if units_path.is_file():
            units = UnitLabels.load(units_path)
        else:
            featurize, hop = self._featurizer()
            by_id = {u.utt_id: u for u in utts}
            features = compute_features(
                list(by_id), lambda utt: featurize(by_id[utt].path), "features for k-means"
            )
            labels = fit_units(
                features,
                int(self.label_cfg["num_classes"]),
                seed=self.seed,
                max_fit_frames=int(self.label_cfg["max_fit_frames"]),
            )
            units = UnitLabels(labels, hop, int(self.label_cfg["num_classes"]))
            units.save(units_path)
            log.info("unit labels (%s, K=%d) in %s", self.label_cfg["source"], units.num_classes, units_path)
        self.topics = self._fit_topics(self.topic_cfg, units, folder, utts)
        if self.second_cfg is not None:
            self.topics2 = self._fit_topics(self.second_cfg, units, folder, utts)
        self.units = units

    def _fit_topics(
        self, cfg: dict[str, Any], units: UnitLabels, folder: Path, utts: list[Utterance]
    ) -> Topics:
        """One topic model (`topics`, or `topics.second`), cached beside the units by its settings."""
        oracle = cfg["oracle"]
        if oracle is not None:
            values = {u.utt_id: u.meta.get(oracle, "") for u in utts}
            return metadata_topics(values, oracle, int(cfg["num_topics"]))
        topic_cfg = {k: cfg[k] for k in ("num_topics", "ngram", "max_iter")}
        if cfg["documents"] != "counts":  # the default keeps the digest of earlier caches
            topic_cfg["documents"] = cfg["documents"]
        words = units.labels
        if cfg["units"] == "segments":
            topic_cfg["segments"] = dict(cfg["segments"])
            topic_cfg["collapse"] = False
            words = self._segment_units(folder, utts, cfg["segments"]).labels
        topics_path = folder / f"topics_{_digest(topic_cfg)}.npz"
        if topics_path.is_file():
            return Topics.load(topics_path)
        topics = fit_topics(
            words,
            int(topic_cfg["num_topics"]),
            ngram=int(topic_cfg["ngram"]),
            seed=self.seed,
            max_iter=int(topic_cfg["max_iter"]),
            documents=cfg["documents"],
            speakers={u.utt_id: u.meta.get("speaker", "") for u in utts},
            collapse=bool(topic_cfg.get("collapse", True)),
        )
        topics.save(topics_path)
        return topics

    def _segment_units(self, folder: Path, utts: list[Utterance], cfg: dict[str, Any]) -> UnitLabels:
        """The acoustic words of `topics.units=segments` (cached beside the units): windows of
        speaker-normalised MFCCs clustered by k-means, see `labels.fit_segment_units`."""
        path = folder / f"segments_{_digest(cfg)}.npz"
        if path.is_file():
            return UnitLabels.load(path)
        n_mfcc = int(cfg["n_mfcc"])
        by_id = {u.utt_id: u for u in utts}
        features = compute_features(  # the static coefficients: Δ and ΔΔ add little to a window
            list(by_id),
            lambda utt: mfcc_features(load_audio(by_id[utt].path), n_mfcc)[:, :n_mfcc].numpy(),
            "features for segment k-means",
        )
        speakers = {u.utt_id: u.meta.get("speaker", "") for u in utts}
        labels = fit_segment_units(
            features,
            int(cfg["num_classes"]),
            length=int(cfg["frames"]),
            hop=int(cfg["hop"]),
            pool=int(cfg["pool"]),
            speakers=speakers,
            seed=self.seed,
        )
        segments = UnitLabels(labels, MFCC_HOP * int(cfg["hop"]), int(cfg["num_classes"]))
        segments.save(path)
        log.info("segment units (K=%d) for the topic model in %s", segments.num_classes, path)
        return segments

    def setup(self, stage: str | None = None) -> None:
        if self.units is None or self.topics is None:
            self.prepare_data()
        assert self.units is not None and self.topics is not None
        for split in self.splits.values():
            for utt in split:
                if utt.meta:
                    self.meta[utt.utt_id] = utt.meta
                if utt.transcript:
                    self.transcripts[utt.utt_id] = utt.transcript

    # ------------------------------------------------------------------ model arguments
    def model_overrides(self) -> dict[str, Any]:
        """The number of units and topics come from the data (stored with the model config)."""
        overrides = {
            "num_classes": int(self.label_cfg["num_classes"]),
            "num_topics": int(self.topic_cfg["num_topics"]),
        }
        if self.second_cfg is not None:
            overrides["num_topics2"] = int(self.second_cfg["num_topics"])
        return overrides

    def use_model_config(self, model_config: dict[str, Any]) -> None:
        """Evaluation of a checkpoint: label and topic sizes as the model was trained with."""
        if "num_classes" in model_config:
            self.label_cfg["num_classes"] = int(model_config["num_classes"])
        if model_config.get("num_topics"):
            self.topic_cfg["num_topics"] = int(model_config["num_topics"])
        if model_config.get("num_topics2") and self.second_cfg is not None:
            self.second_cfg["num_topics"] = int(model_config["num_topics2"])

    def dataset(self, split: str) -> UtteranceDataset:
        if not self.splits:
            self.setup(split)
        assert self.units is not None and self.topics is not None
        return UtteranceDataset(
            self.splits[split],
            self.units.labels,
            self.units.hop,
            self.topics.as_dict(),
            self.topic_cfg["targets"],
            self.max_samples if split == "train" else None,
            self.seed,
            topics2=self.topics2.as_dict() if self.topics2 is not None else None,
            topic_targets2=self.second_cfg["targets"] if self.second_cfg is not None else "hard",
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return seeded_loader(
            self.dataset(split),
            collate,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
        )

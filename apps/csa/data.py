"""Temporal action localisation data for BMN(+CSA): ActivityNet-format features and annotations
(mmaction2's layout) or THUMOS-14, and the generated default set.

Each video gives ``features (C, T)`` at the model's temporal scale (rescaled by linear interpolation
when the files hold another number of snippets), its ground-truth segments normalised to the
feature-covered duration exactly as mmaction2's ``GenerateLocalizationLabels`` does
(``seconds / (feature_frame / duration_frame · duration_second)``, clipped to [0, 1]), and its
``VideoInfo`` for post-processing back to seconds and for the metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from apps.csa.formats import (
    FORMATS,
    VideoInfo,
    read_annotations,
    read_class_names,
    read_feature_array,
    read_feature_csv,
    read_thumos_annotations,
    rescale_features,
)

log = logging.getLogger(__name__)

SPLIT_KEYS = ("train", "val", "test")


def normalised_boxes(video: VideoInfo) -> np.ndarray:
    """Ground-truth ``[start, end]`` per segment over the feature-covered time, in [0, 1]: ``(N, 2)``."""
    covered = video.feature_frame / video.duration_frame * video.duration_second
    boxes = np.array([[s.start, s.end] for s in video.segments], dtype=np.float64).reshape(-1, 2)
    return np.clip(boxes / covered, 0.0, 1.0)


def video_label(video: VideoInfo) -> str | None:
    """The video's class: the label covering most of its annotated time (None without segments)."""
    if not video.segments:
        return None
    covered: Counter = Counter()
    for segment in video.segments:
        covered[segment.label] += segment.end - segment.start
    return max(sorted(covered), key=lambda label: covered[label])


class VideoFeatures(Dataset):
    """Videos of one split: ``features (C, T)`` float32, normalised boxes and the ``VideoInfo``."""

    def __init__(self, videos: list[VideoInfo], features: list[np.ndarray]) -> None:
        self.videos = videos
        self.features = features

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "features": torch.from_numpy(self.features[index]),
            "gt_bbox": torch.from_numpy(normalised_boxes(self.videos[index])),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "features": torch.stack([item["features"] for item in items]),
        "gt_bbox": [item["gt_bbox"] for item in items],
    }


class LocalizationDataModule(pl.LightningDataModule):
    """ActivityNet-format (default, generated on first use) or THUMOS-14 localisation data.

    Args:
        data_dir: where the default dataset is generated (or a folder with real ActivityNet-format
            files: ``features/<video>.csv`` and ``anet_anno_{train,val,test}.json``).
        format: ``activitynet`` or ``thumos``.
        annotation_files: per split (``train``/``val``/``test``) annotation JSON; default: the
            ActivityNet names in ``data_dir``.
        feature_dir: folder of per-video feature files (``<video>.csv``, or ``.npy`` for THUMOS).
        classes_file: one class name per line (default ``data_dir/classes.txt``, else the labels
            found in the annotations, sorted).
        temporal_scale: snippets per video given to the model (BMN's ``temporal_dim``); features with
            another length are linearly rescaled.
        feature_dim: channels per snippet (400 for TSN features).
        generator: knobs of ``apps.csa.generate.GeneratorConfig`` for the default dataset.
    """

    def __init__(
        self,
        data_dir: str,
        format: str = "activitynet",
        annotation_files: dict[str, str] | None = None,
        feature_dir: str | None = None,
        classes_file: str | None = None,
        generate: bool = True,
        generator: dict[str, Any] | None = None,
        generation_workers: int = 2,
        temporal_scale: int = 100,
        feature_dim: int = 400,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"app.data.format must be one of {FORMATS}, got {format!r}")
        self.data_dir = Path(data_dir).expanduser()
        self.format = format
        self.annotation_files = dict(annotation_files or {})
        self.feature_dir = Path(feature_dir).expanduser() if feature_dir else self.data_dir / "features"
        self.classes_file = classes_file
        self.generate = generate
        self.generator = dict(generator or {})
        self.generation_workers = generation_workers
        self.temporal_scale = temporal_scale
        self.feature_dim = feature_dim
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, VideoFeatures] = {}
        self.classes: list[str] = []

    def _annotation_path(self, split: str) -> Path:
        defaults = {
            "train": "anet_anno_train.json",
            "val": "anet_anno_val.json",
            "test": "anet_anno_test.json",
        }
        name = self.annotation_files.get(split) or defaults[split]
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    def prepare_data(self) -> None:
        if self.generate and self.format == "activitynet" and not self.annotation_files:
            from apps.csa.generate import GeneratorConfig, build_dataset

            build_dataset(self.data_dir, GeneratorConfig(**self.generator), workers=self.generation_workers)

    def _read_split(self, split: str) -> tuple[list[VideoInfo], list[np.ndarray]]:
        path = self._annotation_path(split)
        if not path.is_file():
            raise FileNotFoundError(
                f"app.data.annotation_files.{split}: no such annotation file: {path}"
                + (" (set app.data.generate=true for the generated dataset)" if not self.generate else "")
            )
        reader = read_annotations if self.format == "activitynet" else read_thumos_annotations
        videos = list(reader(path).values())
        features = []
        for video in videos:
            if self.format == "activitynet":
                array = read_feature_csv(self.feature_dir / f"{video.name}.csv", expected_shape=None)
            else:
                candidates = [self.feature_dir / f"{video.name}{ext}" for ext in (".npy", ".csv")]
                found = next((p for p in candidates if p.is_file()), None)
                if found is None:
                    raise FileNotFoundError(
                        f"{path}: video {video.name!r}: no feature file in {self.feature_dir}"
                    )
                array = read_feature_array(found)
            if array.shape[1] != self.feature_dim:
                raise ValueError(
                    f"{self.feature_dir / video.name}: {array.shape[1]} feature channels, "
                    f"app.data.feature_dim is {self.feature_dim}"
                )
            if array.shape[0] != self.temporal_scale:
                array = rescale_features(array, self.temporal_scale)
            features.append(np.ascontiguousarray(array.T, dtype=np.float32))
        return videos, features

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in SPLIT_KEYS:
            videos, features = self._read_split(split)
            if split == "train":
                keep = [i for i, v in enumerate(videos) if v.segments]
                if len(keep) < len(videos):
                    log.info(
                        "train: %d videos without segments skipped (BMN needs one)", len(videos) - len(keep)
                    )
                videos, features = [videos[i] for i in keep], [features[i] for i in keep]
            self.splits[split] = VideoFeatures(videos, features)
        classes_path = (
            Path(self.classes_file).expanduser() if self.classes_file else self.data_dir / "classes.txt"
        )
        if classes_path.is_file():
            self.classes = read_class_names(classes_path)
        else:
            self.classes = sorted(
                {s.label for d in self.splits.values() for v in d.videos for s in v.segments}
            )
        unknown = {s.label for d in self.splits.values() for v in d.videos for s in v.segments} - set(
            self.classes
        )
        if unknown:
            raise ValueError(
                f"{classes_path}: labels in the annotations are not listed: {sorted(unknown)[:5]}"
            )
        log.info(
            "localisation data: %s videos (train/val/test), %d classes, T=%d, C=%d",
            "/".join(str(len(self.splits[s])) for s in SPLIT_KEYS),
            len(self.classes),
            self.temporal_scale,
            self.feature_dim,
        )

    def video_level_training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """Training videos' ``features (N, C, T)`` and class indices, for the video-level classifier."""
        self.setup()
        data = self.splits["train"]
        labels = [self.classes.index(video_label(v)) for v in data.videos]
        return np.stack(data.features), np.asarray(labels)

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

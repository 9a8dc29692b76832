"""The default CSA dataset: generated TSN-like snippet features with exact action segments.

It is written in mmaction2's ActivityNet layout (see :mod:`apps.csa.formats`), so mmaction2's
``ActivityNetDataset`` + BMN pipeline and our own loader read it alike::

    <out>/features/<video>.csv          header f0..f{C-1}, temporal_scale rows x feature_dim columns
    <out>/anet_anno_{train,val,test}.json
    <out>/classes.txt                   one class name per line, index = line number - 1
    <out>/meta.json                     config, generator version, checksums

Real ActivityNet features are 200 rgb + 200 flow TSN class scores, so a class shows up as a few
high channels. Here each class has a fixed random "semantic pattern": a sparse set of channels,
half in each half of the feature vector (rgb and flow), with a mean vector. A snippet inside a
segment carries its class's pattern scaled by its overlap with the segment, an amplitude that ramps
up and down near the boundaries and a per-snippet jitter; every snippet carries Gaussian noise and a
per-video channel bias; background snippets also carry runs of random distractor classes' patterns,
by default as strong as an action (as the background of real videos also scores on other classes).
That is the structure CSA (Sridhar et al., ICCV 2021) exploits: class semantics in the features, and
whether they agree with what the rest of the video is about, tell where actions are; a snippet's
amplitude alone does not. (Sessions up to 25 used weak distractors, ``distractor_amplitude=0.3`` and
0-2 runs per video, where amplitude alone tells action from background: ``experiment=csa_weak``.)

Timing follows ActivityNet: durations of 30 to 240 s at 30 fps, ``duration_frame = round(duration *
fps)``, ``feature_frame = duration_frame // 16 * 16`` (features come from 16-frame snippets; this
makes mmaction2's label generation, which uses ``feature_frame``, and BMN's post-processing, which
uses ``duration_frame // 16 * 16``, agree). The features cover the first ``feature_frame /
duration_frame * duration_second`` seconds, split evenly into ``temporal_scale`` snippets, and all
segments lie inside that span.

Every video draws from its own ``SeedSequence(seed, spawn_key=(split, index))``, so the output
does not depend on the number of workers, and changing ``n_train`` leaves the other splits alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from apps.common.io import atomic_write, sha256_file, write_json

from .formats import (
    FEATURE_EXTRACTION_INTERVAL,
    Segment,
    VideoInfo,
    annotations_bytes,
    feature_csv_bytes,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bumped whenever the sampling changes, so that cached datasets are rebuilt."""

FEATURES_DIR = "features"
META_FILE = "meta.json"
CLASSES_FILE = "classes.txt"
SPLITS = ("training", "validation", "testing")
"""Subset names, as ActivityNet spells them."""
ANNOTATION_FILES = {
    "training": "anet_anno_train.json",
    "validation": "anet_anno_val.json",
    "testing": "anet_anno_test.json",
}
_SPLIT_TAGS = {"training": "train", "validation": "val", "testing": "test"}
_SPLIT_KEYS = {"training": 0, "validation": 1, "testing": 2}
_PATTERN_KEY = 7
_LEFTOVER_AGE_S = 600.0
"""Temporary files of interrupted writes older than this are removed."""
_VIDEO_NAME = re.compile(r"v_(train|val|test)_\d+\.csv")

ACTION_NAMES = (
    "Archery", "Ballet", "Bowling", "Canoeing", "Climbing", "Cooking", "Cycling", "Dancing",
    "Diving", "Fencing", "Fishing", "Gardening", "Golf swing", "Hammer throw", "High jump",
    "Hurdling", "Ironing", "Juggling", "Kayaking", "Knitting", "Long jump", "Mowing lawn",
    "Painting", "Pole vault", "Rowing", "Sailing", "Shot put", "Skateboarding", "Skiing",
    "Surfing", "Swimming", "Table tennis", "Tennis serve", "Trampoline", "Vacuuming",
    "Volleyball", "Weightlifting", "Windsurfing", "Wrestling", "Yoga",
)  # fmt: skip


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes, timing, segment layout and feature statistics of the generated dataset.

    Segment lengths are fractions of the span the features cover, drawn from three ranges (short,
    medium, long) with probabilities ``length_probs``; if a video's segments would cover more than
    ``max_coverage`` of it, its longest segments are redrawn short.
    """

    n_train: int = 1200
    n_val: int = 100
    n_test: int = 100
    num_classes: int = 20
    feature_dim: int = 400
    temporal_scale: int = 100
    seed: int = 0
    duration_range: tuple[float, float] = (30.0, 240.0)
    fps: float = 30.0
    segments_range: tuple[int, int] = (1, 4)
    """Inclusive range of the number of segments per video, drawn uniformly."""
    short_range: tuple[float, float] = (0.02, 0.10)
    medium_range: tuple[float, float] = (0.10, 0.40)
    long_range: tuple[float, float] = (0.40, 0.60)
    length_probs: tuple[float, float, float] = (0.4, 0.35, 0.25)
    max_coverage: float = 0.85
    single_class_prob: float = 0.8
    """Probability that all segments of a video share one class (as in most ActivityNet videos)."""
    pattern_channels: int = 16
    """Channels of each class's semantic pattern."""
    pattern_mean_range: tuple[float, float] = (0.6, 1.4)
    amplitude: float = 1.0
    ramp_fraction: float = 0.2
    """Amplitude ramps over this fraction of a segment's length at each end (at least one snippet)."""
    jitter: float = 0.25
    """Standard deviation of the per-snippet multiplicative amplitude jitter."""
    pattern_noise: float = 0.15
    """Relative per-snippet noise on the pattern channels."""
    noise_std: float = 0.5
    video_bias_std: float = 0.15
    distractors_range: tuple[int, int] = (1, 3)
    """Inclusive range of the number of distractor runs per video: background runs of a random
    class's pattern outside the actions (the weak set of sessions up to 25: ``(0, 2)``)."""
    distractor_amplitude: float = 1.0
    """Amplitude of a distractor run, relative to ``amplitude`` of actions: as strong as an action by
    default, so that only class semantics tell it from one (the weak set: 0.3)."""
    distractor_length_range: tuple[float, float] = (0.05, 0.2)
    csv_precision: int = 4
    """Significant digits of the CSV values."""

    def __post_init__(self) -> None:
        # ranges given as lists (YAML, Hydra's ListConfig) become plain tuples: the config stays
        # hashable and is recorded in meta.json the same way whatever form it came in
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(item.default, tuple) and not isinstance(value, tuple):
                object.__setattr__(self, item.name, tuple(value))
        for name in ("n_train", "n_val", "n_test", "num_classes", "feature_dim", "temporal_scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be positive, got {getattr(self, name)}")
        ranges = (
            "duration_range short_range medium_range long_range pattern_mean_range "
            "distractor_length_range segments_range distractors_range"
        ).split()
        for name in ranges:
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"GeneratorConfig.{name} must satisfy 0 <= low <= high, got {(low, high)}")
        if self.duration_range[0] <= 0 or self.fps <= 0:
            raise ValueError("GeneratorConfig.duration_range and fps must be positive")
        if self.duration_range[0] * self.fps < FEATURE_EXTRACTION_INTERVAL:
            raise ValueError(f"videos must have at least {FEATURE_EXTRACTION_INTERVAL} frames")
        if self.segments_range[0] < 1:
            raise ValueError("GeneratorConfig.segments_range must start at 1 or more")
        if self.long_range[1] > self.max_coverage or not 0 < self.max_coverage < 1:
            raise ValueError("GeneratorConfig.max_coverage must lie in (0, 1) and hold a long segment")
        if self.segments_range[1] * self.short_range[1] > self.max_coverage:
            raise ValueError("GeneratorConfig: the most segments, all short, must fit in max_coverage")
        if self.short_range[0] <= 0:
            raise ValueError("GeneratorConfig.short_range must start above 0")
        if (
            len(self.length_probs) != 3
            or min(self.length_probs) < 0
            or not math.isclose(sum(self.length_probs), 1)
        ):
            raise ValueError(f"GeneratorConfig.length_probs must be 3 probabilities, got {self.length_probs}")
        if not 0 <= self.single_class_prob <= 1:
            raise ValueError("GeneratorConfig.single_class_prob must lie in [0, 1]")
        if not 2 <= self.pattern_channels <= self.feature_dim:
            raise ValueError("GeneratorConfig.pattern_channels must lie in [2, feature_dim]")
        if self.distractor_length_range[1] > 1:
            raise ValueError("GeneratorConfig.distractor_length_range must lie in [0, 1]")
        if not 1 <= self.csv_precision <= 9:
            raise ValueError("GeneratorConfig.csv_precision must lie in [1, 9]")

    @property
    def sizes(self) -> dict[str, int]:
        """Videos per subset."""
        return {"training": self.n_train, "validation": self.n_val, "testing": self.n_test}


def class_names(num_classes: int) -> list[str]:
    """Readable class names; generic ``Action 000`` names beyond :data:`ACTION_NAMES`."""
    if num_classes <= len(ACTION_NAMES):
        return list(ACTION_NAMES[:num_classes])
    return [f"Action {index:03d}" for index in range(num_classes)]


def video_name(subset: str, index: int) -> str:
    """``v_<split>_<index>``: mmaction2's ActivityNet metric drops the leading ``v_``."""
    return f"v_{_SPLIT_TAGS[subset]}_{index:05d}"


@functools.lru_cache(maxsize=4)
def class_patterns(config: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each class's pattern: ``channels (K, pattern_channels)`` int and ``means (K, C)`` float32.

    Half of a class's channels lie in the first half of the feature vector (rgb scores), half in
    the second (flow scores); ``means`` is zero outside a class's channels.
    """
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_PATTERN_KEY,)))
    first_half = config.feature_dim // 2
    in_first = config.pattern_channels // 2
    channels = np.empty((config.num_classes, config.pattern_channels), dtype=np.int64)
    means = np.zeros((config.num_classes, config.feature_dim), dtype=np.float32)
    for label in range(config.num_classes):
        if first_half >= in_first and config.feature_dim - first_half >= config.pattern_channels - in_first:
            rgb = rng.choice(first_half, in_first, replace=False)
            flow = first_half + rng.choice(
                config.feature_dim - first_half, config.pattern_channels - in_first, replace=False
            )
            picked = np.concatenate([rgb, flow])
        else:
            picked = rng.choice(config.feature_dim, config.pattern_channels, replace=False)
        channels[label] = np.sort(picked)
        means[label, channels[label]] = rng.uniform(*config.pattern_mean_range, size=config.pattern_channels)
    channels.setflags(write=False)
    means.setflags(write=False)
    return channels, means


def _segment_fractions(rng: np.random.Generator, config: GeneratorConfig) -> list[tuple[float, float]]:
    """Non-overlapping ``(start, end)`` fractions of the covered span, in time order."""
    count = int(rng.integers(config.segments_range[0], config.segments_range[1] + 1))
    ranges = (config.short_range, config.medium_range, config.long_range)
    kinds = rng.choice(3, size=count, p=np.asarray(config.length_probs) / sum(config.length_probs))
    lengths = np.array([rng.uniform(*ranges[kind]) for kind in kinds])
    while lengths.sum() > config.max_coverage:
        lengths[np.argmax(lengths)] = rng.uniform(*config.short_range)
    gaps = rng.dirichlet(np.ones(count + 1)) * (1.0 - lengths.sum())
    lengths = lengths[rng.permutation(count)]
    fractions, position = [], 0.0
    for gap, length in zip(gaps[:count], lengths):
        start = position + gap
        fractions.append((float(start), float(start + length)))
        position = start + length
    return fractions


def generate_video(config: GeneratorConfig, subset: str, index: int) -> tuple[VideoInfo, np.ndarray]:
    """One video's annotation and features ``(temporal_scale, feature_dim)`` float32."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_SPLIT_KEYS[subset], index)))
    names = class_names(config.num_classes)
    _, means = class_patterns(config)
    duration = round(float(rng.uniform(*config.duration_range)), 2)
    duration_frame = round(duration * config.fps)
    feature_frame = duration_frame // FEATURE_EXTRACTION_INTERVAL * FEATURE_EXTRACTION_INTERVAL
    covered = feature_frame / duration_frame * duration

    single_class = rng.random() < config.single_class_prob
    fractions = _segment_fractions(rng, config)
    if single_class:
        labels = [int(rng.integers(config.num_classes))] * len(fractions)
    else:
        labels = [int(rng.integers(config.num_classes)) for _ in fractions]
    segments = [
        Segment(round(start * covered, 3), math.floor(end * covered * 1000) / 1000, names[label])
        for (start, end), label in zip(fractions, labels)
    ]

    scale, dim = config.temporal_scale, config.feature_dim
    step = covered / scale
    edges = np.arange(scale + 1) * step
    centers = (edges[:-1] + edges[1:]) / 2
    features = config.noise_std * rng.standard_normal((scale, dim))
    features += config.video_bias_std * rng.standard_normal(dim)
    inside = np.zeros(scale)
    for segment, label in zip(segments, labels):
        overlap = (
            np.clip(np.minimum(edges[1:], segment.end) - np.maximum(edges[:-1], segment.start), 0, None)
            / step
        )
        ramp_length = max(step, config.ramp_fraction * (segment.end - segment.start))
        distance = np.minimum(centers - segment.start, segment.end - centers)
        ramp = np.clip(distance / ramp_length + 0.5, 0.0, 1.0)
        jitter = np.clip(1.0 + config.jitter * rng.standard_normal(scale), 0.0, None)
        weight = config.amplitude * overlap * ramp * jitter
        pattern = means[label] * (1.0 + config.pattern_noise * rng.standard_normal((scale, dim)))
        features += weight[:, None] * pattern
        inside += overlap
    background = np.clip(1.0 - inside, 0.0, 1.0)
    for _ in range(int(rng.integers(config.distractors_range[0], config.distractors_range[1] + 1))):
        label = int(rng.integers(config.num_classes))
        length = max(1, round(rng.uniform(*config.distractor_length_range) * scale))
        start = int(rng.integers(0, scale - length + 1))
        weight = np.zeros(scale)
        weight[start : start + length] = config.distractor_amplitude
        weight *= background * np.clip(1.0 + config.jitter * rng.standard_normal(scale), 0.0, None)
        features += weight[:, None] * means[label]

    video = VideoInfo(
        name=video_name(subset, index),
        duration_second=duration,
        duration_frame=duration_frame,
        feature_frame=feature_frame,
        fps=config.fps,
        segments=segments,
        subset=subset,
    )
    return video, features.astype(np.float32)


def _sha256_file(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _features_digest(feature_sha256: dict[str, str]) -> str:
    lines = "".join(f"{name} {feature_sha256[name]}\n" for name in sorted(feature_sha256))
    return hashlib.sha256(lines.encode()).hexdigest()


def _build_video(task: tuple[GeneratorConfig, str, int, str, bool]) -> tuple[VideoInfo, str | None]:
    """Generate a video; if asked, write its CSV. Returns its info and the CSV's sha256 when written."""
    config, subset, index, features_dir, write = task
    video, features = generate_video(config, subset, index)
    if not write:
        return video, None
    data = feature_csv_bytes(features, config.csv_precision)
    atomic_write(Path(features_dir) / f"{video.name}.csv", lambda handle: handle.write(data))
    return video, hashlib.sha256(data).hexdigest()


def _run(tasks: list, workers: int) -> Iterator[tuple[VideoInfo, str | None]]:
    written = sum(task[-1] for task in tasks)
    bar = tqdm(total=len(tasks), desc="CSA dataset", unit="video", disable=written == 0)
    try:
        if workers > 1 and written > 8:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, len(tasks) // (workers * 16))
                for result in pool.map(_build_video, tasks, chunksize=chunk):
                    bar.update()
                    yield result
        else:
            for task in tasks:
                result = _build_video(task)
                bar.update()
                yield result
    finally:
        bar.close()


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write(path, lambda handle: handle.write(data))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _verify(out_dir: Path, meta: dict[str, Any]) -> tuple[bool, set[str]]:
    """Whether the small files match ``meta``, and the names of videos whose CSV does not."""
    small_ok = all(
        _sha256_file(out_dir / name) == digest for name, digest in meta.get("file_sha256", {}).items()
    )
    features = meta.get("feature_sha256", {})
    stale = {
        name
        for name, digest in features.items()
        if _sha256_file(out_dir / FEATURES_DIR / f"{name}.csv") != digest
    }
    digest_ok = meta.get("features_digest") == _features_digest(features)
    return small_ok and digest_ok, stale


def build_dataset(
    out_dir: str | Path, config: GeneratorConfig | None = None, workers: int = 2
) -> dict[str, Any]:
    """Build the dataset into ``out_dir`` (or reuse it) and return its metadata (``meta.json``).

    An existing build is reused when ``meta.json`` records the same config and generator version
    and every file still has its recorded sha256; CSVs that are missing or changed are rewritten
    alone. Otherwise everything is regenerated. Files are written atomically and ``meta.json``
    last, so an interrupted build is redone on the next call. ``workers <= 1`` builds in this
    process. Build from one process at a time (Lightning's ``prepare_data``); concurrent builds of
    one folder write identical files but may remove each other's feature CSVs of another config.
    """
    config = config or GeneratorConfig()
    out_dir = Path(out_dir)
    features_dir = out_dir / FEATURES_DIR
    expected = {"generator_version": GENERATOR_VERSION, "config": _jsonable(asdict(config))}
    names = {video_name(subset, index) for subset in SPLITS for index in range(config.sizes[subset])}
    meta = _read_meta(out_dir)
    reuse = (
        meta is not None
        and all(meta.get(key) == value for key, value in expected.items())
        and isinstance(meta.get("file_sha256"), dict)
        and isinstance(meta.get("feature_sha256"), dict)
        and set(meta["feature_sha256"]) == names
    )
    if reuse:
        small_ok, stale = _verify(out_dir, meta)
        if small_ok and not stale:
            logger.info("CSA dataset in %s is up to date", out_dir)
            return meta
        logger.info("CSA dataset in %s: rewriting %d changed or missing feature files", out_dir, len(stale))
    else:
        stale = None
        logger.info("building the CSA dataset in %s", out_dir)

    started = time.perf_counter()
    features_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        (config, subset, index, str(features_dir), stale is None or video_name(subset, index) in stale)
        for subset in SPLITS
        for index in range(config.sizes[subset])
    ]
    videos: dict[str, list[VideoInfo]] = {subset: [] for subset in SPLITS}
    feature_sha256 = {} if stale is None else dict(meta["feature_sha256"])
    for video, digest in _run(tasks, workers):
        videos[video.subset].append(video)
        if digest is not None:
            feature_sha256[video.name] = digest

    expected_files = {f"{name}.csv" for name in feature_sha256}
    for path in features_dir.iterdir():
        leftover = path.name.startswith(".") and path.name.endswith(".tmp")
        if leftover and time.time() - path.stat().st_mtime < _LEFTOVER_AGE_S:
            continue  # possibly another process's write in flight
        if leftover or (_VIDEO_NAME.fullmatch(path.name) and path.name not in expected_files):
            logger.info("removing stale %s", path)
            path.unlink()

    file_sha256 = {}
    for subset in SPLITS:
        data = annotations_bytes(videos[subset])
        _write_if_changed(out_dir / ANNOTATION_FILES[subset], data)
        file_sha256[ANNOTATION_FILES[subset]] = hashlib.sha256(data).hexdigest()
    classes = ("\n".join(class_names(config.num_classes)) + "\n").encode()
    _write_if_changed(out_dir / CLASSES_FILE, classes)
    file_sha256[CLASSES_FILE] = hashlib.sha256(classes).hexdigest()

    meta = {
        **expected,
        "format": "activitynet",
        "features_dir": FEATURES_DIR,
        "annotation_files": dict(ANNOTATION_FILES),
        "classes_file": CLASSES_FILE,
        "num_videos": config.sizes,
        "file_sha256": file_sha256,
        "feature_sha256": feature_sha256,
        "features_digest": _features_digest(feature_sha256),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out_dir / META_FILE, meta)
    logger.info("built the CSA dataset in %s in %.1f s", out_dir, meta["build_seconds"])
    return _jsonable(meta)

"""The default CSA dataset generator: determinism, layout, class patterns, caching, mmaction2 compatibility."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from apps.csa.formats import FEATURE_EXTRACTION_INTERVAL, read_annotations, read_class_names, read_feature_csv
from apps.csa.generate import (
    ANNOTATION_FILES,
    FEATURES_DIR,
    GENERATOR_VERSION,
    GeneratorConfig,
    build_dataset,
    class_names,
    class_patterns,
    generate_video,
)

TINY = GeneratorConfig(n_train=10, n_val=2, n_test=2, num_classes=5)


def _files(out: Path) -> dict[str, int]:
    """Modification times (ns) of every file under ``out``."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def _content(meta: dict) -> dict:
    """``meta`` without the build time."""
    return {key: value for key, value in meta.items() if key != "build_seconds"}


def _overlaps(config: GeneratorConfig, video) -> np.ndarray:
    """``(temporal_scale,)`` share of each snippet covered by segments, and the label of each segment."""
    step = video.covered_second / config.temporal_scale
    edges = np.arange(config.temporal_scale + 1) * step
    return np.stack(
        [
            np.clip(np.minimum(edges[1:], s.end) - np.maximum(edges[:-1], s.start), 0, None) / step
            for s in video.segments
        ]
    )


def test_generate_video_is_deterministic_and_well_formed() -> None:
    config = GeneratorConfig()
    first, features = generate_video(config, "training", 3)
    again, features_again = generate_video(config, "training", 3)
    assert first == again
    np.testing.assert_array_equal(features, features_again)
    assert features.shape == (100, 400) and features.dtype == np.float32 and np.isfinite(features).all()
    other, other_features = generate_video(replace(config, seed=1), "training", 3)
    assert not np.allclose(features, other_features)
    # a video's draw depends on (seed, split, index) only, not on the sizes of the splits
    assert (
        generate_video(replace(config, n_train=3), "validation", 1)[0]
        == generate_video(config, "validation", 1)[0]
    )

    for subset in ("training", "validation", "testing"):
        for index in range(40):
            video, _ = generate_video(config, subset, index)
            assert video.subset == subset and video.name.startswith("v_")
            assert 30.0 <= video.duration_second <= 240.0
            assert video.duration_frame == round(video.duration_second * 30.0)
            assert video.feature_frame % FEATURE_EXTRACTION_INTERVAL == 0
            assert 0 <= video.duration_frame - video.feature_frame < FEATURE_EXTRACTION_INTERVAL
            ends = [bound for s in video.segments for bound in (s.start, s.end)]
            assert ends == sorted(ends), "segments overlap or are out of order"
            assert all(s.start >= 0 and s.start < s.end <= video.covered_second for s in video.segments)
            assert all(s.label in class_names(config.num_classes) for s in video.segments)
            assert all(type(s.start) is float and type(s.end) is float for s in video.segments)


def test_segment_counts_lengths_and_classes_vary() -> None:
    config = GeneratorConfig()
    counts, fractions, labels = set(), [], set()
    for index in range(150):
        video, _ = generate_video(config, "training", index)
        counts.add(len(video.segments))
        fractions += [(s.end - s.start) / video.covered_second for s in video.segments]
        labels |= {s.label for s in video.segments}
    assert counts == {1, 2, 3, 4}
    fractions = np.array(fractions)
    assert fractions.min() < 0.05 and fractions.max() > 0.45
    assert (fractions < 0.1).mean() > 0.2 and (fractions > 0.4).mean() > 0.1
    assert labels == set(class_names(config.num_classes))


def test_class_patterns_stand_out_inside_segments() -> None:
    config = GeneratorConfig()
    channels, means = class_patterns(config)
    assert channels.shape == (20, 16) and means.shape == (20, 400)
    assert ((channels < 200).sum(axis=1) == 8).all(), "half of each pattern in the rgb half"
    names = class_names(config.num_classes)
    own, background, foreign = [], [], []
    for index in range(40):
        video, features = generate_video(config, "validation", index)
        overlaps = _overlaps(config, video)
        for segment, overlap in zip(video.segments, overlaps):
            label = names.index(segment.label)
            inside = overlap > 0.99
            if inside.any():
                own.append(features[inside][:, channels[label]].mean())
                others = np.setdiff1d(np.arange(400), channels[label])
                foreign.append(features[inside][:, others].mean())
            outside = overlaps.sum(axis=0) == 0
            if outside.any():
                background.append(features[outside][:, channels[label]].mean())
    own, background, foreign = map(np.mean, (own, background, foreign))
    assert own > 0.7, own
    assert own > background + 0.6 and own > foreign + 0.6, (own, background, foreign)


def test_build_dataset_layout_and_caching(tmp_path: Path) -> None:
    out = tmp_path / "csa"
    meta = build_dataset(out, TINY, workers=1)
    assert meta["generator_version"] == GENERATOR_VERSION and meta["num_videos"]["training"] == 10
    assert meta["config"]["n_train"] == 10 and meta["format"] == "activitynet"
    assert read_class_names(out / "classes.txt") == class_names(5)
    for subset, file in ANNOTATION_FILES.items():
        videos = read_annotations(out / file)
        assert len(videos) == TINY.sizes[subset]
        assert {video.subset for video in videos.values()} == {subset}
        for name in videos:
            assert read_feature_csv(out / FEATURES_DIR / f"{name}.csv").shape == (100, 400)
    assert len(list((out / FEATURES_DIR).iterdir())) == 14

    before = _files(out)
    assert build_dataset(out, TINY, workers=1) == meta
    assert _files(out) == before, "an up-to-date dataset must not be rewritten"

    corrupted = out / FEATURES_DIR / "v_train_00004.csv"
    original = corrupted.read_bytes()
    corrupted.write_bytes(original[:1000] + b"garbage\n")
    (out / FEATURES_DIR / "v_val_00001.csv").unlink()
    assert _content(build_dataset(out, TINY, workers=1)) == _content(meta)
    assert corrupted.read_bytes() == original
    after = _files(out)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {f"{FEATURES_DIR}/v_train_00004.csv", f"{FEATURES_DIR}/v_val_00001.csv", "meta.json"}


def test_partial_builds_and_config_changes_are_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "csa"
    meta = build_dataset(out, TINY, workers=1)
    (out / "meta.json").unlink()  # as if a build was interrupted before its end
    leftover = out / FEATURES_DIR / ".v_train_00001.csv.abc.tmp"
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    fresh = out / FEATURES_DIR / ".v_train_00002.csv.def.tmp"  # maybe another process's write
    fresh.write_bytes(b"half")
    (out / "anet_anno_val.json").write_text("{")
    assert _content(build_dataset(out, TINY, workers=1)) == _content(meta)
    assert list((out / FEATURES_DIR).glob(".*.tmp")) == [fresh]
    fresh.unlink()
    assert read_annotations(out / "anet_anno_val.json").keys() == {"v_val_00000", "v_val_00001"}

    smaller = replace(TINY, n_train=4, seed=5)
    meta = build_dataset(out, smaller, workers=1)
    assert meta["config"]["seed"] == 5
    names = sorted(p.stem for p in (out / FEATURES_DIR).iterdir())
    assert names == [f"v_test_0000{i}" for i in range(2)] + [f"v_train_0000{i}" for i in range(4)] + [
        f"v_val_0000{i}" for i in range(2)
    ]
    assert json.loads((out / "meta.json").read_text())["features_digest"] == meta["features_digest"]


def test_parallel_build_matches_serial(tmp_path: Path) -> None:
    serial = build_dataset(tmp_path / "serial", TINY, workers=1)
    parallel = build_dataset(tmp_path / "parallel", TINY, workers=2)
    assert parallel["feature_sha256"] == serial["feature_sha256"]
    assert parallel["file_sha256"] == serial["file_sha256"]


def test_mmaction2_reads_the_generated_dataset(tmp_path: Path) -> None:
    try:
        from mmaction.datasets import ActivityNetDataset
        from mmaction.datasets.transforms import GenerateLocalizationLabels, LoadLocalizationFeature
    except ImportError as err:  # the mmaction2 1.2.0 wheel may not import (upstream issue #2714)
        pytest.skip(f"mmaction.datasets does not import here: {err}")
    out = tmp_path / "csa"
    build_dataset(out, replace(TINY, n_train=3), workers=1)
    ours = read_annotations(out / "anet_anno_train.json")
    dataset = ActivityNetDataset(
        ann_file=str(out / "anet_anno_train.json"),
        pipeline=[LoadLocalizationFeature(), GenerateLocalizationLabels()],
        data_prefix=dict(video=str(out / FEATURES_DIR)),
    )
    assert len(dataset) == 3
    for index in range(3):
        sample = dataset[index]
        video = ours[sample["video_name"]]
        features = read_feature_csv(out / FEATURES_DIR / f"{video.name}.csv")
        assert sample["raw_feature"].shape == (400, 100)
        np.testing.assert_array_equal(sample["raw_feature"], features.T)
        expected = [[s.start / video.covered_second, s.end / video.covered_second] for s in video.segments]
        np.testing.assert_allclose(sample["gt_bbox"], expected, rtol=1e-9)
        assert sample["feature_frame"] == video.feature_frame


def test_ranges_from_yaml_lists_are_stored_as_tuples_and_reuse_the_build(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    knobs = OmegaConf.create({"distractors_range": [1, 3], "distractor_amplitude": 1.0})
    from_yaml = GeneratorConfig(n_train=10, n_val=2, n_test=2, num_classes=5, **knobs)
    assert from_yaml.distractors_range == (1, 3) and isinstance(from_yaml.distractors_range, tuple)
    hash(from_yaml)  # class_patterns caches on the config
    direct = replace(TINY, distractors_range=(1, 3), distractor_amplitude=1.0)
    assert from_yaml == direct
    out = tmp_path / "csa"
    meta = build_dataset(out, direct, workers=1)
    assert meta["config"]["distractors_range"] == [1, 3]
    before = _files(out)
    assert _content(build_dataset(out, from_yaml, workers=1)) == _content(meta)
    assert _files(out) == before  # reused, nothing rewritten


def test_strong_distractors_carry_other_classes_outside_the_actions() -> None:
    config = replace(
        TINY, distractor_amplitude=1.0, distractors_range=(1, 3), noise_std=0.0, video_bias_std=0.0
    )
    _, means = class_patterns(config)
    strong = 0
    for index in range(10):
        video, features = generate_video(config, "training", index)
        inside = _overlaps(config, video).sum(axis=0) > 0
        outside = features[~inside]
        if len(outside):
            strong += (outside.max(axis=1) > 0.5).any()
    assert strong >= 8  # nearly every video has a distractor as strong as an action outside its segments

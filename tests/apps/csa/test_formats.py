"""Readers and writers of the CSA app's dataset formats (ActivityNet as mmaction2 reads it, THUMOS-14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apps.csa.formats import (
    FORMATS,
    Segment,
    VideoInfo,
    read_annotations,
    read_class_names,
    read_feature_array,
    read_feature_csv,
    read_thumos_annotations,
    read_thumos_class_files,
    rescale_features,
    write_annotations,
    write_feature_csv,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- feature CSV


def test_feature_csv_round_trip(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(100, 400)).astype(np.float32)
    path = write_feature_csv(tmp_path / "v_a.csv", features)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["f0", "f1"] and header[-1] == "f399" and len(header) == 400
    loaded = read_feature_csv(path)
    assert loaded.dtype == np.float32 and loaded.shape == (100, 400)
    np.testing.assert_allclose(loaded, features, rtol=1e-4, atol=1e-5)
    # mmaction2's LoadLocalizationFeature reads the same numbers (then transposes them)
    np.testing.assert_array_equal(np.loadtxt(path, dtype=np.float32, delimiter=",", skiprows=1), loaded)


def test_feature_csv_other_shape_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "a,b,c\r\n1,2,3\r\n\r\n4,5.5,-5e-1\n\n")
    np.testing.assert_array_equal(read_feature_csv(path, expected_shape=None), [[1, 2, 3], [4, 5.5, -0.5]])
    np.testing.assert_array_equal(read_feature_csv(path, expected_shape=(2, 3)).shape, (2, 3))


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("1,2,3\n4,5,6\n", ":1: missing header"),
        ("", ":1: empty"),
        ("a,b,c\n1,2,3\n4,5\n", ":3: row has 2 columns"),
        ("a,b,c\n1,2,3\n4,5,6,7\n", ":3: row has 4 columns"),
        ("a,b,c\n1,2,3\n4,x,6\n", ":3: column 2: not a number"),
        ("a,b,c\n1,2,3\n4,,6\n", ":3: column 2: not a number"),
        ("a,b,c\n1,2,3\n4,5,6\n7,8,nan\n", ":4: column 3: non-finite"),
        ("a,b,c\n1,2,3\n\n-inf,8,9\n", ":4: column 1: non-finite"),
        ("a,b,c\n1,2,3\n1e39,8,9\n", ":3: column 1: non-finite"),
        ("a,b\n1,2,3\n4,5,6\n", ":1: the header has 2 columns"),
    ],
)
def test_feature_csv_errors_name_file_and_line(tmp_path: Path, text: str, location: str) -> None:
    path = _write(tmp_path / "v_bad.csv", text)
    with pytest.raises(ValueError) as info:
        read_feature_csv(path, expected_shape=None)
    assert f"{path}{location}" in str(info.value)


def test_feature_csv_header_only_and_wrong_shape(tmp_path: Path) -> None:
    path = _write(tmp_path / "v_header.csv", "f0,f1\n")
    with pytest.raises(ValueError, match="no data rows") as info:
        read_feature_csv(path, expected_shape=None)
    assert str(path) in str(info.value)
    path = write_feature_csv(tmp_path / "v_small.csv", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*expected \(100, 400\)") as info:
        read_feature_csv(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="v_missing.csv"):
        read_feature_csv(tmp_path / "v_missing.csv")


def test_write_feature_csv_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        write_feature_csv(tmp_path / "a.csv", np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        write_feature_csv(tmp_path / "a.csv", np.ones(3))
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- ActivityNet JSON


def _video(**overrides) -> dict:
    entry = {
        "duration_second": 100.0,
        "duration_frame": 3000,
        "feature_frame": 2992,
        "fps": 30.0,
        "rfps": 29.97,
        "annotations": [{"segment": [10.0, 20.5], "label": "Long jump"}],
    }
    entry.update(overrides)
    return entry


def test_annotations_round_trip(tmp_path: Path) -> None:
    videos = {
        "v_a": VideoInfo(
            "v_a", 100.0, 3000, 2992, 30.0, [Segment(1.0, 2.0, "X"), Segment(5, 90.5, "Y")], "training"
        ),
        "v_b": VideoInfo("v_b", 31.5, 945, 944, 30.0, [], "testing", rfps=29.97),
    }
    path = write_annotations(tmp_path / "anet_anno_train.json", videos)
    assert read_annotations(path) == videos
    assert json.loads(path.read_text())["v_a"]["annotations"][1] == {"segment": [5, 90.5], "label": "Y"}
    assert videos["v_a"].covered_second == pytest.approx(2992 / 3000 * 100.0)


def test_annotations_clip_within_tolerance(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"v_a": _video(annotations=[{"segment": [-0.2, 100.4], "label": "X"}])}))
    assert read_annotations(path)["v_a"].segments == [Segment(0.0, 100.0, "X")]


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        (_video(duration_frame=None), "duration_frame"),
        (_video(duration_frame=12.5), "duration_frame"),
        (_video(duration_second=True), "duration_second"),
        (_video(duration_second=-3.0), "duration_second"),
        (_video(fps="30"), "fps"),
        (_video(annotations={"segment": [1, 2]}), "annotations"),
        (_video(annotations=[{"segment": [1, 2, 3], "label": "X"}]), "annotations[0].segment"),
        (_video(annotations=[{"label": "X"}]), "annotations[0].segment"),
        (_video(annotations=[{"segment": [5, 5], "label": "X"}]), "annotations[0].segment"),
        (_video(annotations=[{"segment": [5, 150], "label": "X"}]), "annotations[0].segment"),
        (
            _video(annotations=[{"segment": [1, 2], "label": "X"}, {"segment": [1, 2], "label": ""}]),
            "annotations[1].label",
        ),
        (_video(annotations=[{"segment": [1, 2], "label": 3}]), "annotations[0].label"),
    ],
)
def test_annotation_errors_name_file_video_and_key(tmp_path: Path, entry: dict, key: str) -> None:
    entry = {name: value for name, value in entry.items() if value is not None}
    path = tmp_path / "anet_anno_val.json"
    path.write_text(json.dumps({"v_good": _video(), "v_bad": entry}))
    with pytest.raises(ValueError) as info:
        read_annotations(path)
    assert f"{path}: video 'v_bad': key '{key}'" in str(info.value)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", '{\n  "v_a": {"fps": 30,,\n}')
    with pytest.raises(ValueError, match="malformed JSON") as info:
        read_annotations(path)
    assert f"{path}:2:" in str(info.value)
    with pytest.raises(ValueError, match="non-empty object"):
        read_annotations(_write(tmp_path / "b.json", "[]"))


def test_read_class_names(tmp_path: Path) -> None:
    assert read_class_names(_write(tmp_path / "c.txt", "Long jump\nDiving\n\n")) == ["Long jump", "Diving"]
    with pytest.raises(ValueError, match="duplicate"):
        read_class_names(_write(tmp_path / "d.txt", "A\nA\n"))


# ----------------------------------------------------------------------------- THUMOS-14


def test_thumos_json_both_layouts(tmp_path: Path) -> None:
    database = {
        "video_validation_0000051": {
            "subset": "validation",
            "duration": 169.8,
            "annotations": [{"segment": [67.5, 75.9], "label": "BaseballPitch"}],
        },
        "video_test_0000004": {"subset": "test", "duration": 33.0, "fps": 25.0, "annotations": []},
    }
    plain = tmp_path / "thumos.json"
    plain.write_text(json.dumps(database))
    wrapped = tmp_path / "thumos14.json"
    wrapped.write_text(json.dumps({"version": "THUMOS14", "database": database}))
    for path in (plain, wrapped):
        videos = read_thumos_annotations(path)
        first = videos["video_validation_0000051"]
        assert (first.subset, first.fps, first.duration_frame, first.feature_frame) == (
            "validation",
            30.0,
            5094,
            5094,
        )
        assert first.segments == [Segment(67.5, 75.9, "BaseballPitch")]
        assert videos["video_test_0000004"].duration_frame == 825
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"video_x": {"subset": "test", "annotations": []}}))
    with pytest.raises(ValueError, match=r"video 'video_x': key 'duration_second': missing"):
        read_thumos_annotations(path)


def test_thumos_class_files(tmp_path: Path) -> None:
    _write(
        tmp_path / "BaseballPitch_val.txt",
        "video_validation_0000051 67.5 75.9\nvideo_validation_0000051  8.2 12.0\n",
    )
    _write(
        tmp_path / "Diving_val.txt", "video_validation_0000051 30.0 31.0\n\nvideo_validation_0000052 1 2\n"
    )
    _write(tmp_path / "Ambiguous_val.txt", "video_validation_0000051 0.5 1.5\n")
    _write(tmp_path / "Diving_test.txt", "video_test_0000004 3.0 4.0\nvideo_test_0000004 5.0 5.0\n")
    validation = read_thumos_class_files(tmp_path, subset="val")
    assert validation == {
        "video_validation_0000051": [
            Segment(8.2, 12.0, "BaseballPitch"),
            Segment(30.0, 31.0, "Diving"),
            Segment(67.5, 75.9, "BaseballPitch"),
        ],
        "video_validation_0000052": [Segment(1.0, 2.0, "Diving")],
    }
    everything = read_thumos_class_files(tmp_path, include_ambiguous=True)
    assert everything["video_test_0000004"] == [Segment(3.0, 4.0, "Diving")]
    assert Segment(0.5, 1.5, "Ambiguous") in everything["video_validation_0000051"]

    _write(tmp_path / "Golf_val.txt", "video_validation_0000060 1.0 2.0\nvideo_validation_0000060 2.0\n")
    with pytest.raises(ValueError) as info:
        read_thumos_class_files(tmp_path, subset="val")
    assert f"{tmp_path / 'Golf_val.txt'}:2:" in str(info.value)
    _write(tmp_path / "Golf_val.txt", "video_validation_0000060 4.0 x\n")
    with pytest.raises(ValueError, match=r"Golf_val.txt:1: start and end"):
        read_thumos_class_files(tmp_path, subset="val")
    _write(tmp_path / "Golf_val.txt", "video_validation_0000060 4.0 2.0\n")
    with pytest.raises(ValueError, match=r"Golf_val.txt:1: invalid segment"):
        read_thumos_class_files(tmp_path, subset="val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no THUMOS class files"):
        read_thumos_class_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such THUMOS annotation folder"):
        read_thumos_class_files(tmp_path / "missing")


def test_read_feature_array(tmp_path: Path) -> None:
    features = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "video_a.npy", features)
    loaded = read_feature_array(tmp_path / "video_a.npy", expected_channels=3)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, features)
    write_feature_csv(tmp_path / "video_b.csv", features)
    np.testing.assert_array_equal(read_feature_array(tmp_path / "video_b.csv"), features)

    with pytest.raises(ValueError, match=r"video_a.npy: 3 feature channels, expected 2048"):
        read_feature_array(tmp_path / "video_a.npy", expected_channels=2048)
    np.save(tmp_path / "video_c.npy", np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"video_c.npy: expected a non-empty \(T, C\)"):
        read_feature_array(tmp_path / "video_c.npy")
    np.save(tmp_path / "video_d.npy", np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match=r"video_d.npy: non-finite value at snippet 0, channel 1"):
        read_feature_array(tmp_path / "video_d.npy")
    with pytest.raises(ValueError, match=r"video_e.h5: unsupported"):
        read_feature_array(_write(tmp_path / "video_e.h5", "x"))


def test_rescale_features() -> None:
    constant = np.full((37, 5), 2.5, dtype=np.float32)
    for scale in (1, 10, 37, 256):
        np.testing.assert_allclose(rescale_features(constant, scale), np.full((scale, 5), 2.5), rtol=1e-6)
    ramp = np.stack([np.arange(11.0), -np.arange(11.0)], axis=1)
    for scale in (4, 11, 101):
        rescaled = rescale_features(ramp, scale)
        assert rescaled.shape == (scale, 2)
        np.testing.assert_allclose(rescaled[:, 0], np.linspace(0, 10, scale), atol=1e-9)
        np.testing.assert_array_equal(rescaled[[0, -1]], ramp[[0, -1]])
    np.testing.assert_array_equal(rescale_features(ramp, 11), ramp)
    np.testing.assert_array_equal(rescale_features(np.ones((1, 3)), 4), np.ones((4, 3)))
    with pytest.raises(ValueError, match="temporal_scale"):
        rescale_features(ramp, 0)


def test_formats_listed() -> None:
    assert FORMATS == ("activitynet", "thumos")

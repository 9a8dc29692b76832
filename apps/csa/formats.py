"""Readers and writers of temporal action localisation datasets, as mmaction2's BMN reads them.

Formats (:data:`FORMATS`):

- ``activitynet``: mmaction2's ActivityNet layout. One annotation JSON per split
  (``anet_anno_{train,val,test}.json``) mapping a video name to ``duration_second``,
  ``duration_frame``, ``feature_frame``, ``fps``, optional ``rfps`` and ``annotations``
  (``[{"segment": [start_sec, end_sec], "label": str}]``); our generator adds ``subset``. Features
  are one CSV per video, ``<feature_dir>/<video_name>.csv``: a header row (skipped by mmaction2),
  then ``temporal_scale`` rows (100 snippets, already rescaled) of ``C`` floats (400: TSN rgb and
  flow class scores). mmaction2 (1.2) reads exactly this: ``ActivityNetDataset`` joins
  ``data_prefix['video'] + '/' + video_name + '.csv'``; ``LoadLocalizationFeature`` runs
  ``np.loadtxt(path, float32, delimiter=',', skiprows=1)`` and transposes to ``(C, T)``;
  ``GenerateLocalizationLabels`` divides segments by ``feature_frame / duration_frame *
  duration_second`` (the seconds the features cover) and clips to [0, 1]; BMN's post-processing
  maps proposals back to seconds with ``duration_frame // 16 * 16`` in place of ``feature_frame``,
  so both agree when ``feature_frame`` is ``duration_frame`` rounded down to a multiple of 16
  (:data:`FEATURE_EXTRACTION_INTERVAL`). The ActivityNet metric strips the first two characters
  of a video name (the ``v_`` of YouTube ids), so names should start with ``v_``.
- ``thumos``: THUMOS-14. Annotations either as the JSON used by BMN/ActionFormer forks
  (``{video: {"duration", "subset", "annotations", optional "fps"}}``, optionally wrapped in
  ``{"database": ...}``), read by :func:`read_thumos_annotations`, or as the official per-class
  files ``<Class>_val.txt`` / ``<Class>_test.txt`` with lines ``video_name start end``, read by
  :func:`read_thumos_class_files`. Features are per-video arrays ``(T, C)`` with each video's own
  length (``.npy`` or the CSV above), read by :func:`read_feature_array`.

Temporal scale: ActivityNet CSVs are already rescaled to ``temporal_scale`` rows. THUMOS arrays
have one row per snippet (often hundreds to thousands); :func:`rescale_features` resamples them to
the model's ``temporal_scale`` (e.g. 256 or 750) by linear interpolation along time, aligning the
first and last snippets. Long videos lose temporal detail that way; slice a window first to keep it.

Every error names the file and, where the format has one, the line (and column).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apps.common.io import atomic_write

logger = logging.getLogger(__name__)

FORMATS = ("activitynet", "thumos")

ANET_TEMPORAL_SCALE = 100
"""Rows of an ActivityNet feature CSV (snippets after rescaling), BMN's ``temporal_dim``."""
ANET_FEATURE_DIM = 400
"""Columns of an ActivityNet feature CSV: 200 rgb + 200 flow TSN class scores."""
FEATURE_EXTRACTION_INTERVAL = 16
"""Frames per feature snippet; BMN's ``feature_extraction_interval``."""
THUMOS_SUBSETS = {"val": "validation", "test": "test"}
"""Suffix of the official per-class files -> subset name."""
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Segment:
    """An annotated action instance: ``start < end`` in seconds and its class name."""

    start: float
    end: float
    label: str


@dataclass
class VideoInfo:
    """One video's metadata and ground-truth segments, as in mmaction2's annotation JSON.

    ``subset`` ("training"/"validation"/"testing", or THUMOS's "validation"/"test") and ``rfps``
    (the real frame rate) are optional; mmaction2 ignores both.
    """

    name: str
    duration_second: float
    duration_frame: int
    feature_frame: int
    fps: float
    segments: list[Segment]
    subset: str | None = None
    rfps: float | None = field(default=None)

    @property
    def covered_second(self) -> float:
        """Seconds covered by the features: mmaction2's ``corrected_second``."""
        return self.feature_frame / self.duration_frame * self.duration_second


# ----------------------------------------------------------------------------- JSON helpers


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no such annotation file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from err


class _Where:
    """Builds error messages ``<file>: video '<name>': key '<key>': <problem>``."""

    def __init__(self, path: Path, video: str) -> None:
        self.path, self.video = path, video

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: video {self.video!r}: key {key!r}: {problem}")


def _number(where: _Where, key: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.error(key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise where.error(key, f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise where.error(key, f"expected a positive number, got {value!r}")
    return float(value)


def _integer(where: _Where, key: str, value: Any) -> int:
    number = _number(where, key, value, positive=True)
    if not number.is_integer():
        raise where.error(key, f"expected a positive integer, got {value!r}")
    return int(number)


def _required(where: _Where, entry: Mapping[str, Any], key: str) -> Any:
    if key not in entry:
        raise where.error(key, "missing")
    return entry[key]


def _parse_segments(where: _Where, annotations: Any, duration: float, tolerance: float) -> list[Segment]:
    """Checks ``[{"segment": [s, e], "label": str}]``; ends within ``tolerance`` s outside are clipped."""
    if not isinstance(annotations, list):
        raise where.error("annotations", f"expected a list, got {type(annotations).__name__}")
    segments = []
    for index, annotation in enumerate(annotations):
        key = f"annotations[{index}]"
        if not isinstance(annotation, Mapping):
            raise where.error(key, f"expected an object, got {type(annotation).__name__}")
        if "segment" not in annotation:
            raise where.error(f"{key}.segment", "missing")
        bounds = annotation["segment"]
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise where.error(f"{key}.segment", f"expected [start, end], got {bounds!r}")
        start = _number(where, f"{key}.segment", bounds[0])
        end = _number(where, f"{key}.segment", bounds[1])
        if start < -tolerance or end > duration + tolerance:
            raise where.error(f"{key}.segment", f"[{start}, {end}] lies outside the video [0, {duration}] s")
        if start < 0 or end > duration:
            logger.debug("%s: clipped segment [%s, %s] to [0, %s]", where.video, start, end, duration)
            start, end = max(start, 0.0), min(end, duration)
        if not start < end:
            raise where.error(f"{key}.segment", f"start {start} is not before end {end}")
        label = annotation.get("label")
        if not isinstance(label, str) or not label.strip():
            raise where.error(f"{key}.label", f"expected a non-empty string, got {label!r}")
        segments.append(Segment(start, end, label))
    return segments


# ----------------------------------------------------------------------------- ActivityNet JSON


def read_annotations(path: str | Path, tolerance: float = 1.0) -> dict[str, VideoInfo]:
    """Read an mmaction2 ActivityNet annotation JSON (``anet_anno_*.json``) and check it.

    Segments may overshoot ``[0, duration_second]`` by up to ``tolerance`` seconds (real
    annotations do); they are clipped. Extra keys are ignored.
    """
    path = Path(path)
    database = _load_json(path)
    if not isinstance(database, dict) or not database:
        raise ValueError(f"{path}: expected a non-empty object mapping video names to video info")
    videos = {}
    for name, entry in database.items():
        where = _Where(path, name)
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: video {name!r}: expected an object, got {type(entry).__name__}")
        duration = _number(where, "duration_second", _required(where, entry, "duration_second"), True)
        duration_frame = _integer(where, "duration_frame", _required(where, entry, "duration_frame"))
        feature_frame = _integer(where, "feature_frame", _required(where, entry, "feature_frame"))
        fps = _number(where, "fps", _required(where, entry, "fps"), positive=True)
        rfps = _number(where, "rfps", entry["rfps"], positive=True) if "rfps" in entry else None
        subset = entry.get("subset")
        if subset is not None and not isinstance(subset, str):
            raise where.error("subset", f"expected a string, got {subset!r}")
        segments = _parse_segments(where, _required(where, entry, "annotations"), duration, tolerance)
        videos[name] = VideoInfo(name, duration, duration_frame, feature_frame, fps, segments, subset, rfps)
    return videos


def _video_to_json(video: VideoInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "duration_second": video.duration_second,
        "duration_frame": video.duration_frame,
        "feature_frame": video.feature_frame,
        "fps": video.fps,
        "annotations": [{"segment": [s.start, s.end], "label": s.label} for s in video.segments],
    }
    if video.rfps is not None:
        entry["rfps"] = video.rfps
    if video.subset is not None:
        entry["subset"] = video.subset
    return entry


def annotations_bytes(videos: Mapping[str, VideoInfo] | Sequence[VideoInfo]) -> bytes:
    """The bytes :func:`write_annotations` writes: JSON keyed by video name, in the given order."""
    items = videos.values() if isinstance(videos, Mapping) else videos
    payload = {video.name: _video_to_json(video) for video in items}
    return (json.dumps(payload, indent=1) + "\n").encode()


def write_annotations(path: str | Path, videos: Mapping[str, VideoInfo] | Sequence[VideoInfo]) -> Path:
    """Write videos as an mmaction2 ActivityNet annotation JSON, atomically, in the given order."""
    data = annotations_bytes(videos)
    return atomic_write(path, lambda handle: handle.write(data))


def read_class_names(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored); a class's index is its position."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such class list: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate class names {duplicates}")
    return names


# ----------------------------------------------------------------------------- feature CSV


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _locate_csv_error(path: Path, body: str, columns: int) -> ValueError | None:
    """Find the first ragged row, unparsable or non-finite value in ``body`` (line 2 onwards)."""
    for line_no, line in enumerate(body.splitlines(), start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != columns:
            return ValueError(f"{path}:{line_no}: row has {len(fields)} columns, the header has {columns}")
        for column, text in enumerate(fields, start=1):
            try:
                value = float(text)
            except ValueError:
                return ValueError(f"{path}:{line_no}: column {column}: not a number: {text!r}")
            if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
                return ValueError(f"{path}:{line_no}: column {column}: non-finite value {text.strip()!r}")
    return None


def read_feature_csv(
    path: str | Path, expected_shape: tuple[int, int] | None = (ANET_TEMPORAL_SCALE, ANET_FEATURE_DIM)
) -> np.ndarray:
    """Read one mmaction2 feature CSV as float32 ``(T, C)`` (mmaction2 itself transposes to ``(C, T)``).

    The first row must be a header (some field not a number), since mmaction2 skips it; every
    data row must have the header's number of columns and finite values. Blank lines are skipped,
    as ``np.loadtxt`` does.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such feature file: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from err
    header, _, body = text.partition("\n")
    header_fields = header.rstrip("\r").split(",")
    if not header.strip():
        raise ValueError(f"{path}:1: empty file or empty header row")
    if all(_is_number(name) for name in header_fields):
        raise ValueError(f"{path}:1: missing header row (the first row is numeric; mmaction2 skips it)")
    if not body.strip():
        raise ValueError(f"{path}: no data rows after the header")
    columns = len(header_fields)
    try:
        features = np.loadtxt(io.StringIO(body), dtype=np.float32, delimiter=",", comments=None, ndmin=2)
    except ValueError as err:
        raise _locate_csv_error(path, body, columns) or ValueError(f"{path}: {err}") from err
    if features.shape[1] != columns:
        raise ValueError(f"{path}:1: the header has {columns} columns, the data rows {features.shape[1]}")
    if not np.isfinite(features).all():
        raise _locate_csv_error(path, body, columns) or ValueError(f"{path}: non-finite values")
    if expected_shape is not None and features.shape != tuple(expected_shape):
        raise ValueError(
            f"{path}: feature shape {features.shape} (rows, columns), expected {tuple(expected_shape)}"
        )
    return features


def feature_csv_bytes(features: np.ndarray, precision: int = 5) -> bytes:
    """The bytes :func:`write_feature_csv` writes for ``features (T, C)``."""
    features = np.asarray(features)
    if features.ndim != 2 or 0 in features.shape:
        raise ValueError(f"features must be a non-empty (T, C) array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features hold non-finite values")
    buffer = io.BytesIO()
    header = ",".join(f"f{index}" for index in range(features.shape[1]))
    np.savetxt(buffer, features, fmt=f"%.{precision}g", delimiter=",", header=header, comments="")
    return buffer.getvalue()


def write_feature_csv(path: str | Path, features: np.ndarray, precision: int = 5) -> Path:
    """Write ``features (T, C)`` as an mmaction2 feature CSV (header ``f0..f{C-1}``), atomically."""
    data = feature_csv_bytes(features, precision)
    return atomic_write(path, lambda handle: handle.write(data))


# ----------------------------------------------------------------------------- THUMOS-14


def read_thumos_annotations(
    path: str | Path, default_fps: float = 30.0, tolerance: float = 1.0
) -> dict[str, VideoInfo]:
    """Read THUMOS-14 annotations in the JSON layout of BMN/ActionFormer forks.

    ``{video: {"duration": s, "subset": str, "annotations": [{"segment": [s, e], "label": str}]}}``,
    optionally under a top-level ``"database"`` key. ``fps`` defaults to ``default_fps`` (THUMOS
    videos are mostly 30 fps); ``duration_frame`` is read or ``round(duration * fps)``;
    ``feature_frame`` is read or equals ``duration_frame`` (THUMOS features cover the whole video).
    """
    path = Path(path)
    database = _load_json(path)
    if isinstance(database, dict) and isinstance(database.get("database"), dict):
        database = database["database"]
    if not isinstance(database, dict) or not database:
        raise ValueError(f"{path}: expected a non-empty object mapping video names to video info")
    videos = {}
    for name, entry in database.items():
        where = _Where(path, name)
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: video {name!r}: expected an object, got {type(entry).__name__}")
        duration_key = "duration" if "duration" in entry else "duration_second"
        duration = _number(where, duration_key, _required(where, entry, duration_key), positive=True)
        fps = _number(where, "fps", entry["fps"], positive=True) if "fps" in entry else default_fps
        if "duration_frame" in entry:
            duration_frame = _integer(where, "duration_frame", entry["duration_frame"])
        else:
            duration_frame = max(1, round(duration * fps))
        if "feature_frame" in entry:
            feature_frame = _integer(where, "feature_frame", entry["feature_frame"])
        else:
            feature_frame = duration_frame
        subset = entry.get("subset")
        if subset is not None and not isinstance(subset, str):
            raise where.error("subset", f"expected a string, got {subset!r}")
        segments = _parse_segments(where, entry.get("annotations", []), duration, tolerance)
        videos[name] = VideoInfo(name, duration, duration_frame, feature_frame, fps, segments, subset)
    return videos


def read_thumos_class_files(
    folder: str | Path, subset: str | None = None, include_ambiguous: bool = False
) -> dict[str, list[Segment]]:
    """Read the official THUMOS-14 per-class files ``<Class>_{val,test}.txt`` of a folder.

    Each line is ``video_name start end`` (seconds, whitespace-separated). ``subset`` picks
    ``"val"`` or ``"test"`` files (both by default; their video names differ). ``Ambiguous_*.txt``
    marks unscored regions and is skipped unless ``include_ambiguous``. Zero-length segments are
    skipped with a warning. Returns each video's segments sorted by start.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such THUMOS annotation folder: {folder}")
    if subset is not None and subset not in THUMOS_SUBSETS:
        raise ValueError(f"subset must be one of {sorted(THUMOS_SUBSETS)} or None, got {subset!r}")
    suffixes = [subset] if subset else list(THUMOS_SUBSETS)
    files = sorted(p for suffix in suffixes for p in folder.glob(f"*_{suffix}.txt"))
    if not include_ambiguous:
        files = [p for p in files if not p.name.startswith("Ambiguous_")]
    if not files:
        raise FileNotFoundError(f"{folder}: no THUMOS class files <Class>_{{{','.join(suffixes)}}}.txt")
    videos: dict[str, list[Segment]] = {}
    for file in files:
        label = file.stem.rsplit("_", 1)[0]
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError(f"{file}:{line_no}: expected 'video_name start end', got {line.strip()!r}")
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError as err:
                raise ValueError(
                    f"{file}:{line_no}: start and end must be numbers: {line.strip()!r}"
                ) from err
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
                raise ValueError(f"{file}:{line_no}: invalid segment [{start}, {end}]")
            if end == start:
                logger.warning("%s:%d: skipped zero-length segment at %s s", file, line_no, start)
                continue
            videos.setdefault(fields[0], []).append(Segment(start, end, label))
    for segments in videos.values():
        segments.sort(key=lambda s: (s.start, s.end, s.label))
    return videos


def read_feature_array(path: str | Path, expected_channels: int | None = None) -> np.ndarray:
    """Read one video's features ``(T, C)`` as float32 from ``.npy`` or a feature CSV (any ``T``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such feature file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        features = read_feature_csv(path, expected_shape=None)
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable .npy array: {err}") from err
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"{path}: expected a non-empty (T, C) array, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"{path}: expected real numbers, got dtype {array.dtype}")
        features = array.astype(np.float32)
        bad = np.argwhere(~np.isfinite(features))
        if len(bad):
            raise ValueError(f"{path}: non-finite value at snippet {bad[0][0]}, channel {bad[0][1]}")
    else:
        raise ValueError(f"{path}: unsupported feature file type {suffix!r} (expected .npy or .csv)")
    if expected_channels is not None and features.shape[1] != expected_channels:
        raise ValueError(f"{path}: {features.shape[1]} feature channels, expected {expected_channels}")
    return features


def rescale_features(features: np.ndarray, temporal_scale: int) -> np.ndarray:
    """Resample ``features (T, C)`` to ``(temporal_scale, C)`` by linear interpolation along time.

    Output row ``i`` samples position ``i * (T - 1) / (temporal_scale - 1)``: the first and last
    snippets are kept and a constant signal stays constant. ``T == 1`` is repeated.
    """
    features = np.asarray(features)
    if features.ndim != 2 or 0 in features.shape:
        raise ValueError(f"features must be a non-empty (T, C) array, got shape {features.shape}")
    if temporal_scale < 1:
        raise ValueError(f"temporal_scale must be positive, got {temporal_scale}")
    length = features.shape[0]
    dtype = features.dtype if np.issubdtype(features.dtype, np.floating) else np.float32
    if length == 1:
        return np.repeat(features.astype(dtype), temporal_scale, axis=0)
    positions = np.linspace(0.0, length - 1, temporal_scale) if temporal_scale > 1 else np.zeros(1)
    lower = np.minimum(np.floor(positions).astype(np.int64), length - 2)
    weight = (positions - lower)[:, None]
    rescaled = features[lower] * (1.0 - weight) + features[lower + 1] * weight
    return rescaled.astype(dtype)

"""Tests for reading/writing the Pointer Networks line format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from apps.ptrnet.formats import (
    DataFormatError,
    Example,
    format_example,
    normalize_task,
    parse_line,
    read_examples,
    write_examples,
)


def _random_examples(task: str, count: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(4, 12))
        pts = rng.random((n, 2), dtype=np.float32)
        if task == "tsp":
            target = [0] + (1 + rng.permutation(n - 1)).tolist()
        elif task == "convex_hull":
            k = int(rng.integers(3, n + 1))
            target = rng.choice(n, size=k, replace=False).tolist()
        else:
            t = int(rng.integers(1, 6))
            target = np.concatenate([rng.choice(n, size=3, replace=False) for _ in range(t)]).tolist()
        out.append(Example(points=pts, target=target, task=task))
    return out


@pytest.mark.parametrize("task", ["convex_hull", "delaunay", "tsp"])
@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_round_trip(tmp_path: Path, task: str, suffix: str) -> None:
    examples = _random_examples(task, 25, seed=len(task) * 10 + len(suffix))
    path = tmp_path / f"data{suffix}"
    write_examples(path, examples, task)
    back = read_examples(path, task)
    assert back == examples
    assert all(ex.points.dtype == np.float32 and ex.points.shape[1] == 2 for ex in back)
    if suffix.endswith(".gz"):
        with open(path, "rb") as fh:
            assert fh.read(2) == b"\x1f\x8b"
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_float32_round_trip_extremes(tmp_path: Path) -> None:
    values = np.array(
        [[0.1, 1 / 3], [np.nextafter(np.float32(1), np.float32(0)), 1e-30], [123456.79, -0.0], [5e-8, 0.999]],
        dtype=np.float32,
    )
    ex = Example(points=values, target=[0, 1, 2], task="convex_hull")
    path = write_examples(tmp_path / "x.txt", [ex], "convex_hull")
    (back,) = read_examples(path, "convex_hull")
    assert np.array_equal(back.points, values)
    # short representations where 8 digits are enough
    assert path.read_text().startswith("0.1 0.33333334 ")


def test_paper_format_written_exactly() -> None:
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    hull = Example(points=pts, target=[0, 1, 2], task="convex_hull")
    assert format_example(hull) == "0 0 1 0 1 1 0.5 0.25 output 1 2 3 1"
    tsp = Example(points=pts, target=[0, 3, 1, 2], task="tsp")
    assert format_example(tsp).endswith("output 1 4 2 3 1")
    tri = Example(points=pts, target=[0, 1, 3, 1, 2, 3], task="delaunay")
    assert format_example(tri).endswith("output 1 2 4 2 3 4")


def test_parse_paper_line_both_orientations() -> None:
    line = "0.0 0.0 1.0 0.0 1.0 1.0 0.0 1.0 0.5 0.5 output 1 2 3 4 1"
    ccw = parse_line(line, task="hull")
    assert ccw.task == "convex_hull"
    assert ccw.target == [0, 1, 2, 3]
    assert ccw.points.shape == (5, 2)
    cw = parse_line(line.replace("output 1 2 3 4 1", "output 1 4 3 2 1"), task="convex_hull")
    assert cw.target == [0, 3, 2, 1]


def test_normalize_task() -> None:
    assert normalize_task("hull") == "convex_hull"
    assert normalize_task("TSP") == "tsp"
    with pytest.raises(ValueError, match="unknown task"):
        normalize_task("sorting")


BAD_LINES = [
    ("convex_hull", "0 0 1 0 1 1 1 2 3 1", "missing 'output'"),
    ("convex_hull", "0 0 1 0 1 output 1 2 1", "odd number of coordinates"),
    ("convex_hull", "0 0 1 0 abc 1 output 1 2 3 1", "non-numeric coordinate 'abc'"),
    ("convex_hull", "0 0 1 0 1 1 output 1 2 x 1", "non-numeric output index 'x'"),
    ("convex_hull", "0 0 1 0 1 1 output 0 1 2 0", "out of range"),
    ("tsp", "0 0 1 0 1 1 output 1 2 4 1", "out of range"),
    ("convex_hull", "0 0 1 0 1 1 output 1 2 3", "not closed"),
    ("tsp", "0 0 1 0 1 1 output 1 2 3 2", "not closed"),
    ("delaunay", "0 0 1 0 1 1 0 1 output 1 2 3 1 3", "not a multiple of 3"),
    ("tsp", "0 0 1 0 1 1 0 1 output 1 2 3 1", "not a permutation"),
    ("tsp", "0 0 1 0 1 1 0 1 output 1 2 2 3 1", "not a permutation"),
    ("convex_hull", "0 0 1 0 1 1 output", "empty target"),
    ("convex_hull", "0 0 1 0 nan 1 output 1 2 3 1", "non-finite"),
    ("delaunay", "0 0 1 0 1 1 output 1 1 2", "repeats a vertex"),
]


@pytest.mark.parametrize(("task", "line", "message"), BAD_LINES)
def test_malformed_line_names_path_and_line(tmp_path: Path, task: str, line: str, message: str) -> None:
    good = {
        "convex_hull": "0 0 1 0 1 1 output 1 2 3 1",
        "tsp": "0 0 1 0 1 1 output 1 2 3 1",
        "delaunay": "0 0 1 0 1 1 output 1 2 3",
    }[task]
    path = tmp_path / "bad.txt"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(DataFormatError) as info:
        read_examples(path, task)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ")
    assert message in text
    assert info.value.lineno == 3 and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_malformed_line_in_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("0 0 1 0 1 1 output 1 2 3 1\n0 0 1 0 1 1 output 1 2 3\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt\.gz:2: .*not closed"):
        read_examples(path, "convex_hull")


def test_blank_lines(tmp_path: Path) -> None:
    good = "0 0 1 0 1 1 output 1 2 3 1"
    trailing = tmp_path / "trailing.txt"
    trailing.write_text(f"{good}\n{good}\n\n  \n")
    assert len(read_examples(trailing, "convex_hull")) == 2
    middle = tmp_path / "middle.txt"
    middle.write_text(f"{good}\n\n{good}\n")
    with pytest.raises(DataFormatError, match=r"middle\.txt:2: empty line in the middle"):
        read_examples(middle, "convex_hull")


def test_parse_line_without_path() -> None:
    with pytest.raises(DataFormatError, match=r"^<string>:7: missing 'output'"):
        parse_line("0 0 1 1", task="tsp", lineno=7)


def test_write_rejects_bad_examples_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("old\n")
    pts = np.zeros((3, 2), dtype=np.float32)
    bad = [Example(points=pts, target=[0, 1, 2], task="delaunay"), Example(points=pts, target=[0, 5, 1])]
    with pytest.raises(ValueError, match="out of range"):
        write_examples(path, bad, "delaunay")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]

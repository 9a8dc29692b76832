"""Reading and writing Pointer Networks data files (Vinyals et al., 2015).

The released data stores one example per line::

    x1 y1 x2 y2 ... xn yn output i1 i2 ... ik

Output indices are 1-based.

* ``convex_hull``: the hull vertices as a closed cycle, the first index repeated at the end
  (``... output 1 3 5 1``). Files produced by :mod:`apps.ptrnet.generate` start at the smallest
  index and go counter-clockwise; the reader accepts either orientation and keeps the order
  found in the file (the metrics compare cycles up to rotation and reflection).
* ``tsp``: a tour visiting every point once, closed by repeating the first index.
* ``delaunay``: triangles as consecutive index triplets (``output 1 2 3 1 3 4 ...``).

In memory an :class:`Example` holds 0-based indices; cycles are stored *without* the closing
repeat and Delaunay targets as a flat list of triplets.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the on-disk layout written by :func:`write_examples` (recorded in dataset metadata)."""

TASKS: tuple[str, ...] = ("convex_hull", "delaunay", "tsp")

_TASK_ALIASES = {
    "convex_hull": "convex_hull",
    "convexhull": "convex_hull",
    "convex-hull": "convex_hull",
    "hull": "convex_hull",
    "delaunay": "delaunay",
    "tsp": "tsp",
}

OUTPUT_TOKEN = "output"


class DataFormatError(ValueError):
    """A line of a Pointer Networks data file is malformed.

    The message has the form ``"<path>:<lineno>: <what is wrong>"``.
    """

    def __init__(self, reason: str, *, path: str | os.PathLike[str] | None = None, lineno: int | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.lineno = lineno
        where = self.path if self.path is not None else "<string>"
        if lineno is not None:
            where = f"{where}:{lineno}"
        super().__init__(f"{where}: {reason}")


@dataclass
class Example:
    """One problem instance.

    Attributes:
        points: ``(n, 2)`` float32 coordinates.
        target: 0-based indices. For ``convex_hull``/``tsp`` the cycle without the closing repeat
            (length ``k`` resp. ``n``); for ``delaunay`` a flat list of triplets (length ``3 * t``).
        task: one of :data:`TASKS`.
    """

    points: np.ndarray
    target: list[int] = field(default_factory=list)
    task: str = "convex_hull"

    @property
    def n(self) -> int:
        """Number of points."""
        return int(self.points.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return (
            self.task == other.task
            and list(self.target) == list(other.target)
            and self.points.shape == other.points.shape
            and bool(np.array_equal(self.points, other.points))
        )


def normalize_task(task: str) -> str:
    """Return the canonical task name (``"hull"`` is accepted for ``"convex_hull"``)."""
    key = str(task).strip().lower()
    if key not in _TASK_ALIASES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)} (or 'hull')")
    return _TASK_ALIASES[key]


def _parse_indices(tokens: list[str], n: int, fail: Callable[[str], DataFormatError]) -> list[int]:
    try:
        values = [int(tok) for tok in tokens]
    except ValueError:
        bad = next(tok for tok in tokens if not _is_int(tok))
        raise fail(f"non-numeric output index {bad!r}") from None
    for v in values:
        if v < 1 or v > n:
            raise fail(f"output index {v} out of range (indices are 1-based, must be in 1..{n})")
    return [v - 1 for v in values]


def _is_int(tok: str) -> bool:
    try:
        int(tok)
    except ValueError:
        return False
    return True


def _is_float(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def parse_line(
    line: str,
    *,
    task: str,
    path: str | os.PathLike[str] | None = None,
    lineno: int | None = None,
) -> Example:
    """Parse one line of the paper's format into an :class:`Example`.

    Args:
        line: ``"x1 y1 ... xn yn output i1 ... ik"`` (1-based indices).
        task: ``convex_hull`` (or ``hull``), ``delaunay`` or ``tsp``.
        path, lineno: only used to build error messages.

    Returns:
        An :class:`Example` with ``points`` of shape ``(n, 2)`` float32 and a 0-based ``target``.

    Raises:
        DataFormatError: naming ``path`` and ``lineno`` and describing the problem.
    """
    task = normalize_task(task)

    def fail(reason: str) -> DataFormatError:
        return DataFormatError(reason, path=path, lineno=lineno)

    tokens = line.split()
    if not tokens:
        raise fail("empty line")
    try:
        cut = tokens.index(OUTPUT_TOKEN)
    except ValueError:
        raise fail(f"missing '{OUTPUT_TOKEN}' token separating coordinates from the target") from None
    coord_tokens = tokens[:cut]
    if not coord_tokens:
        raise fail("no coordinates before 'output'")
    if len(coord_tokens) % 2:
        raise fail(f"odd number of coordinates ({len(coord_tokens)}); expected x y pairs")
    try:
        coords = np.array(coord_tokens, dtype=np.float64)
    except ValueError:
        bad = next(tok for tok in coord_tokens if not _is_float(tok))
        raise fail(f"non-numeric coordinate {bad!r}") from None
    if not np.isfinite(coords).all():
        raise fail("non-finite coordinate (nan or inf)")
    points = coords.astype(np.float32).reshape(-1, 2)
    n = points.shape[0]

    index_tokens = tokens[cut + 1 :]
    if OUTPUT_TOKEN in index_tokens:
        raise fail(f"more than one '{OUTPUT_TOKEN}' token")
    if not index_tokens:
        raise fail("empty target after 'output'")
    indices = _parse_indices(index_tokens, n, fail)

    if task == "delaunay":
        if len(indices) % 3:
            raise fail(f"Delaunay target has {len(indices)} indices, not a multiple of 3")
        for t in range(0, len(indices), 3):
            a, b, c = indices[t : t + 3]
            if a == b or b == c or a == c:
                raise fail(f"Delaunay triangle {t // 3 + 1} repeats a vertex: {a + 1} {b + 1} {c + 1}")
        return Example(points=points, target=indices, task=task)

    # convex_hull / tsp: closed cycle
    if len(indices) < 2 or indices[0] != indices[-1]:
        raise fail(
            f"{task} cycle not closed: the first index ({indices[0] + 1}) must be repeated at the end "
            f"(last is {indices[-1] + 1})"
            if len(indices) >= 2
            else f"{task} cycle not closed: a single index {indices[0] + 1}"
        )
    cycle = indices[:-1]
    if len(set(cycle)) != len(cycle):
        if task == "tsp":
            raise fail("TSP tour is not a permutation: it visits a point more than once")
        raise fail("convex_hull cycle visits an index more than once")
    if task == "tsp" and len(cycle) != n:
        raise fail(f"TSP tour is not a permutation: visits {len(cycle)} of {n} points")
    return Example(points=points, target=cycle, task=task)


def _open_text_read(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_examples(path: str | os.PathLike[str], task: str) -> Iterator[Example]:
    """Stream examples from ``path`` (plain text or gzip; gzip is detected from the content).

    Blank lines are allowed only at the end of the file.
    """
    task = normalize_task(task)
    path = Path(path)
    blank_at: int | None = None
    with _open_text_read(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                if blank_at is None:
                    blank_at = lineno
                continue
            if blank_at is not None:
                raise DataFormatError(
                    f"empty line in the middle of the file (next example on line {lineno})",
                    path=path,
                    lineno=blank_at,
                )
            yield parse_line(line, task=task, path=path, lineno=lineno)


def read_examples(path: str | os.PathLike[str], task: str) -> list[Example]:
    """Read all examples of ``path`` (``.txt`` or ``.gz``) into a list; see :func:`iter_examples`."""
    examples = list(iter_examples(path, task))
    logger.info("read %d %s examples from %s", len(examples), normalize_task(task), path)
    return examples


def format_coordinates(points: np.ndarray) -> str:
    """Format ``(n, 2)`` coordinates as ``"x1 y1 ... xn yn"`` with float32 round-trip precision.

    Uses 8 significant digits where that round-trips the float32 value and 9 otherwise.
    """
    flat = np.asarray(points, dtype=np.float32).reshape(-1)
    values = flat.tolist()
    short = [f"{v:.8g}" for v in values]
    if short:
        back = np.array(short, dtype=np.float64).astype(np.float32)
        for i in np.flatnonzero(back != flat).tolist():
            short[i] = f"{values[i]:.9g}"
    return " ".join(short)


def format_example(example: Example, task: str | None = None) -> str:
    """Format one example as a line of the paper's format (1-based indices, no trailing newline)."""
    task = normalize_task(task if task is not None else example.task)
    points = np.asarray(example.points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {points.shape}")
    n = points.shape[0]
    target = [int(i) for i in example.target]
    if any(i < 0 or i >= n for i in target):
        raise ValueError(f"target index out of range 0..{n - 1}: {target}")
    if task == "delaunay":
        if len(target) % 3:
            raise ValueError(f"Delaunay target length {len(target)} is not a multiple of 3")
        out = target
    else:
        if not target:
            raise ValueError(f"{task} target is empty")
        out = target + [target[0]]
    return f"{format_coordinates(points)} {OUTPUT_TOKEN} " + " ".join(str(i + 1) for i in out)


def write_examples(path: str | os.PathLike[str], examples: Iterable[Example], task: str) -> Path:
    """Write ``examples`` to ``path`` in the paper's format, atomically.

    The data goes to a temporary file in the same directory which is then moved over ``path`` with
    :func:`os.replace`, so readers never see a partial file. A ``.gz`` suffix selects gzip
    compression (with a fixed header timestamp, so equal data gives equal bytes).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    task = normalize_task(task)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            gz = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
                if path.suffix == ".gz"
                else None
            )
            text = io.TextIOWrapper(gz if gz is not None else raw, encoding="utf-8", newline="\n")
            for example in examples:
                text.write(format_example(example, task))
                text.write("\n")
                count += 1
            text.flush()
            text.detach()
            if gz is not None:
                gz.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    logger.info("wrote %d %s examples to %s", count, task, path)
    return path

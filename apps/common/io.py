"""Atomic file writes and checkpoint I/O."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through `write(fileobj)` so readers see either the old file or the whole new one.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
    the target (`os.replace` is atomic on POSIX); a crash mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, payload: Any) -> Path:
    data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    return atomic_write(path, lambda handle: handle.write(data + b"\n"))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise RuntimeError(f"could not load checkpoint {path} with weights_only=True: {err}") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically and always loads with `weights_only=True`."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location or "cpu")

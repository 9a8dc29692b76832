"""Run the Pointer Networks tests single-threaded: their models are tiny, and on a shared, busy CPU
one thread per process is several times faster than oversubscribed cores."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    torch.set_num_threads(1)
    os.environ.update({name: "1" for name in saved})  # inherited by the CLI subprocesses
    yield
    torch.set_num_threads(threads)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

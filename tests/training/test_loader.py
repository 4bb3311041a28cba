"""The loader's worker processes: batches in a fixed order, and a failing or dying worker is an error that names it."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from tests.training.conftest import first_keys, small_config
from training.data import ClipLoader, LoaderError, reader_factory
from training.synthetic import SyntheticReader


def test_workers_are_processes_and_batches_alternate_between_them():
    cfg = small_config(**{"data.workers": 2})
    loader = ClipLoader(reader_factory(cfg), cfg)
    batches = iter(loader)
    first = next(batches)
    workers = {p.name for p in multiprocessing.active_children() if p.name.startswith("clip-loader-")}
    assert workers == {"clip-loader-0", "clip-loader-1"}
    second = next(batches)
    loader.close()
    assert first.batch.frames.shape == (4, 8, 16, 16, 3) and first.batch.labels.tolist() == [0, 2, 4, 6]
    assert second.batch.labels.tolist() == [1, 3, 5, 7]  # worker 1 reads the odd clips of the stream
    assert first_keys(ClipLoader(reader_factory(cfg), cfg), 2) == [first.batch.keys, second.batch.keys]


class _Failing(SyntheticReader):
    def __iter__(self):
        raise OSError("shard 7 is unreadable")


def test_a_failing_reader_is_an_error_naming_its_worker():
    cfg = small_config()
    loader = ClipLoader(lambda worker, workers, epoch: _Failing(worker=worker, num_workers=workers), cfg)
    with pytest.raises(LoaderError, match="loader worker 0 failed: OSError: shard 7 is unreadable"):
        next(iter(loader))


class _Dying(SyntheticReader):
    def __iter__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        yield from ()


def test_a_killed_worker_is_an_error_not_a_hang():
    cfg = small_config()
    loader = ClipLoader(lambda worker, workers, epoch: _Dying(worker=worker, num_workers=workers), cfg)
    with pytest.raises(LoaderError, match="loader worker 0 failed: its process exited with code -9"):
        next(iter(loader))

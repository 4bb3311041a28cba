"""The loader: worker processes, batches in a fixed order, a failing or dying worker named, bad samples refused."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import first_keys, small_config
from training.config import with_overrides
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


def test_workers_of_a_killed_trainer_exit_instead_of_waiting_forever():
    """SIGKILL runs no cleanup: the orphaned workers notice their parent is gone and end."""
    script = (
        "import sys\n"
        "from tests.training.conftest import small_config\n"
        "from training.data import ClipLoader, reader_factory\n"
        "import multiprocessing, time\n"
        "cfg = small_config(**{'data.workers': 2})\n"
        "batches = iter(ClipLoader(reader_factory(cfg), cfg))\n"
        "next(batches)\n"
        "print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "time.sleep(600)\n")
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    workers = [int(pid) for pid in trainer.stdout.readline().split()]
    assert len(workers) == 2
    trainer.kill()
    trainer.wait()
    for pid in workers:
        for _ in range(300):  # a worker checks every 0.1 s while its queue is full
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"loader worker {pid} outlived its killed trainer"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_sample_problem_names_each_sample_the_loader_refuses(small):
    from training.data import sample_problem
    from training.synthetic import make_clip

    frames, size = small.model.frames, small.model.size
    good = make_clip(3, seed=1, frames=frames, size=size)
    assert sample_problem(good, small) is None

    def variant(**change):
        return dataclasses.replace(good, **change)

    assert sample_problem(variant(frames=good.frames.astype(np.float32)), small) == "frames_not_uint8"
    assert sample_problem(variant(frames=good.frames[:-1]), small) == "frames_wrong_shape"
    assert sample_problem(variant(sensors={"imu": good.sensors["imu"][:-1]}), small) == "sensor_wrong_shape"
    nan = good.sensors["imu"].copy()
    nan[2, 0] = np.nan
    assert sample_problem(variant(sensors={"imu": nan}), small) == "sensor_not_finite"
    action = with_overrides(small, {"objective.kind": "action"})
    assert sample_problem(variant(sensors={}), action) == "missing_action_stream"

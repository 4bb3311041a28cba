"""The streaming loader: reader processes (ShardReader or the synthetic stream) -> batches, resumable exactly."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from alliance.errors import AllianceError
from training.config import TrainConfig
from training.objectives import imu_actions


class LoaderError(AllianceError):
    """The loader cannot produce batches (a reader failed, or the dataset is smaller than one batch)."""


class Reader(Protocol):
    def __iter__(self) -> Iterator[Any]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


ReaderFactory = Callable[[int, int, int], Reader]  # (worker, num_workers, epoch) -> reader


@dataclass(frozen=True)
class ClipBatch:
    """A batch as the step consumes it: uint8 frames [B, T, S, S, 3] and float32 actions [B, T/tubelet, A]."""

    frames: torch.Tensor
    actions: torch.Tensor
    keys: tuple[str, ...]
    labels: torch.Tensor  # meta["label"] where the clips carry one (synthetic), else -1

    def clip(self, device: torch.device) -> torch.Tensor:
        """Float [B, 3, T, S, S] in [0, 1] on `device` (converted there: a quarter of the bytes cross the bus)."""
        frames = self.frames.to(device, non_blocking=True)
        return frames.permute(0, 4, 1, 2, 3).float().div_(255.0)


@dataclass(frozen=True)
class LoadedBatch:
    """A batch plus the loader state right after it, so a checkpoint resumes at exactly the next batch."""

    batch: ClipBatch
    state: dict


@dataclass(frozen=True)
class BatchArrays:
    """A collated batch as plain numpy arrays: what a loader process sends (torch stays out of the workers)."""

    frames: np.ndarray  # uint8 [B, T, S, S, 3]
    actions: np.ndarray  # float32 [B, T/tubelet, A]
    keys: tuple[str, ...]
    labels: np.ndarray  # int64 [B]

    def to_batch(self) -> ClipBatch:
        return ClipBatch(frames=torch.from_numpy(self.frames), actions=torch.from_numpy(self.actions),
                         keys=self.keys, labels=torch.from_numpy(self.labels))


@dataclass(frozen=True)
class Produced:
    """One batch from worker w, the reader state right after it, and what that worker skipped so far."""

    arrays: BatchArrays
    state: dict
    samples: int  # samples this worker read since it started, usable or not
    rejected: dict[str, int] = field(default_factory=dict)  # refused by `sample_problem`, by reason
    failures: dict[str, int] = field(default_factory=dict)  # skipped by the reader, by reason (decode_failed, ...)


@dataclass(frozen=True)
class WorkerFailed:
    """A loader process stopped on an error; the consumer raises it as a LoaderError naming the worker."""

    message: str


def _flip(key: str, seed: int, epoch: int) -> bool:
    return hashlib.sha256(f"{seed}:{epoch}:{key}".encode()).digest()[0] % 2 == 1


# a horizontal mirror (x -> -x) negates the x component of a vector (acceleration) and the y and z components of a
# pseudo-vector (angular rate): in the default channel order ax, ay, az, gx, gy, gz
MIRROR_SIGNS = np.array([-1.0, 1.0, 1.0, 1.0, -1.0, -1.0], np.float32)


def mirror_imu(imu: np.ndarray) -> np.ndarray:
    """The IMU a horizontally flipped camera would have measured (channels ax, ay, az, gx, gy, gz in camera axes)."""
    if imu.ndim != 2 or imu.shape[1] != len(MIRROR_SIGNS):
        return imu
    return imu * MIRROR_SIGNS


def _time_order(key: str, seed: int, epoch: int, frames: int) -> np.ndarray:
    digest = hashlib.sha256(f"shuffle:{seed}:{epoch}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(frames)


def collate_arrays(samples: list[Any], cfg: TrainConfig, epoch: int = 0) -> BatchArrays:
    """Stack samples (checked by `sample_problem` first) into numpy arrays, flipping where `data.hflip` says (the
    IMU with the frames) and, for the frame-shuffle control only, permuting each clip's time steps."""
    frames = np.stack([s.frames for s in samples])
    empty = np.zeros((0, 0), np.float32)
    sensors = [s.sensors.get(cfg.objective.action_stream, empty) if isinstance(s.sensors, dict) else empty
               for s in samples]
    for i, s in enumerate(samples):
        if cfg.data.hflip and _flip(s.key, cfg.run.seed, epoch):
            frames[i] = frames[i][:, :, ::-1]
            sensors[i] = mirror_imu(sensors[i])
        if cfg.data.shuffle_time:
            order = _time_order(s.key, cfg.run.seed, epoch, frames.shape[1])
            frames[i] = frames[i][order]
            if sensors[i].shape[0] == len(order):
                sensors[i] = sensors[i][order]
    actions = np.stack([imu_actions(sensor, cfg.model.tubelet, cfg.objective.action_dim) for sensor in sensors])
    labels = np.array([int(s.meta.get("label", -1)) if isinstance(s.meta, dict) else -1 for s in samples], np.int64)
    return BatchArrays(frames=np.ascontiguousarray(frames), actions=actions, keys=tuple(s.key for s in samples),
                       labels=labels)


def collate(samples: list[Any], cfg: TrainConfig, epoch: int = 0) -> ClipBatch:
    """Stack samples (checked by `sample_problem` first) into a ClipBatch."""
    return collate_arrays(samples, cfg, epoch).to_batch()


def sample_problem(sample: Any, cfg: TrainConfig) -> str | None:
    """Why a sample cannot be trained on (a stable reason), or None."""
    frames = getattr(sample, "frames", None)
    expected = (cfg.model.frames, cfg.model.size, cfg.model.size, 3)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        return "frames_not_uint8"
    if frames.shape != expected:
        return "frames_wrong_shape"
    sensor = sample.sensors.get(cfg.objective.action_stream) if isinstance(sample.sensors, dict) else None
    if cfg.objective.kind == "action" and sensor is None:
        return "missing_action_stream"
    if sensor is not None and (sensor.ndim != 2 or sensor.shape[0] != cfg.model.frames):
        return "sensor_wrong_shape"
    if sensor is not None and not np.isfinite(sensor).all():  # one NaN in a batch turns every weight into NaN
        return "sensor_not_finite"
    return None


class ClipLoader:
    """`workers` processes, each owning one reader (worker i of n) and filling its own queue with whole batches.

    Batch k comes from worker k mod n, so the order is fixed, and each batch carries the reader state right after
    it: the state of the last consumed batch of every worker plus the next worker index is an exact resume point.
    Processes, not threads: decoding and collating hold the GIL for much of their time, so threads shared one core
    and starved the step (0.73x of its consumption with one thread, 1.05x with four). The workers are forked and
    run only numpy and PyAV; batches travel as numpy arrays and become tensors here.
    """

    def __init__(self, factory: ReaderFactory, cfg: TrainConfig):
        self.factory = factory
        self.cfg = cfg
        self.workers = max(1, cfg.data.workers)
        self.positions: list[dict] = [{"epoch": 0, "reader": None} for _ in range(self.workers)]
        self.next_worker = 0
        self.rejected: Counter[str] = Counter()  # samples the loader refused, by reason
        self.reader_failures: dict[int, dict[str, int]] = {}  # what each worker's reader skipped, by reason
        self.samples = 0
        self._rejected_by_worker: dict[int, dict[str, int]] = {}
        self._samples_by_worker: dict[int, int] = {}
        self._context = multiprocessing.get_context("fork")
        self._queues: list[Any] = []
        self._processes: list[Any] = []
        self._stop: Any = None

    @property
    def skipped(self) -> Counter[str]:
        """Every sample not trained on, by reason: refused here or skipped by a reader."""
        total = Counter(self.rejected)
        for failures in list(self.reader_failures.values()):
            total.update(failures)
        return total

    def state_dict(self) -> dict:
        return {"positions": [dict(p) for p in self.positions], "next_worker": self.next_worker,
                "workers": self.workers}

    def load_state_dict(self, state: dict) -> None:
        if int(state["workers"]) != self.workers:
            raise LoaderError(f"the checkpoint was written with data.workers={state['workers']}, this run has "
                              f"{self.workers}: resume with the same data.workers so the stream continues exactly")
        self.positions = [dict(p) for p in state["positions"]]
        self.next_worker = int(state["next_worker"])

    def __iter__(self) -> Iterator[LoadedBatch]:
        self._start()
        try:
            while True:
                w = self.next_worker
                item = self._get(w)
                if isinstance(item, WorkerFailed):
                    raise LoaderError(f"loader worker {w} failed: {item.message}")
                self.positions[w] = item.state
                self.next_worker = (w + 1) % self.workers
                self._count(w, item)
                yield LoadedBatch(item.arrays.to_batch(), item.state)
        finally:
            self.close()

    def _get(self, w: int) -> Produced | WorkerFailed:
        """The next item of worker w; a worker that died without a word (killed, out of memory) is an error."""
        while True:
            try:
                return self._queues[w].get(timeout=1.0)
            except queue.Empty:
                process = self._processes[w]
                if not process.is_alive():
                    return WorkerFailed(f"its process exited with code {process.exitcode} before sending a batch")

    def _count(self, w: int, item: Produced) -> None:
        self._samples_by_worker[w] = item.samples
        self._rejected_by_worker[w] = item.rejected
        self.reader_failures[w] = item.failures
        self.samples = sum(self._samples_by_worker.values())
        self.rejected = Counter()
        for rejected in self._rejected_by_worker.values():
            self.rejected.update(rejected)

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for q in self._queues:
            q.cancel_join_thread()
            q.close()
        self._processes, self._queues = [], []

    def _start(self) -> None:
        self.close()
        self._stop = self._context.Event()
        self._queues = [self._context.Queue(maxsize=max(1, self.cfg.data.prefetch)) for _ in range(self.workers)]
        self._processes = [
            self._context.Process(target=_produce, name=f"clip-loader-{w}", daemon=True,
                                  args=(self.factory, self.cfg, w, self.workers, dict(self.positions[w]),
                                        self._queues[w], self._stop, os.getpid()))
            for w in range(self.workers)]
        for process in self._processes:
            process.start()


class _Stop:
    """Whether a loader process should end: the consumer said so, or the consumer is gone (killed: SIGKILL runs no
    cleanup, and an orphaned worker would otherwise wait on its full queue forever)."""

    def __init__(self, event: Any, parent: int):
        self.event, self.parent = event, parent

    def is_set(self) -> bool:
        return self.event.is_set() or os.getppid() != self.parent


def _put(out: Any, item: Any, stop: _Stop) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(factory: ReaderFactory, cfg: TrainConfig, w: int, workers: int, position: dict, out: Any,
             event: Any, parent: int) -> None:
    """A loader process: read worker w's stream from `position`, send whole batches until told to stop."""
    stop = _Stop(event, parent)
    epoch, reader_state = int(position["epoch"]), position["reader"]
    batch_size = cfg.data.batch_size
    samples, rejected = 0, Counter()
    try:
        while not stop.is_set():
            reader = factory(w, workers, epoch)
            if reader_state is not None:
                reader.load_state_dict(reader_state)
            produced, pending = 0, []
            for sample in reader:
                if stop.is_set():
                    return
                samples += 1
                problem = sample_problem(sample, cfg)
                if problem:
                    rejected[problem] += 1
                    continue
                pending.append(sample)
                if len(pending) == batch_size:
                    state = {"epoch": epoch, "reader": reader.state_dict()}
                    item = Produced(collate_arrays(pending, cfg, epoch), state, samples, dict(rejected),
                                    dict(getattr(reader, "failures", {})))
                    if not _put(out, item, stop):
                        return
                    produced, pending = produced + 1, []
            if produced == 0 and reader_state is None:
                skipped = Counter(rejected)
                skipped.update(getattr(reader, "failures", {}))
                raise LoaderError(
                    f"worker {w} of {workers} read a whole epoch without one full batch of {batch_size} usable "
                    f"clips (skipped: {dict(skipped) or 'none'}); use a smaller data.batch_size or fewer "
                    f"data.workers, or a larger dataset version")
            epoch, reader_state = epoch + 1, None  # the partial batch is dropped, so resume stays exact
    except BaseException as e:  # sent to the consumer, which raises it with the worker named
        _put(out, WorkerFailed(f"{type(e).__name__}: {e}" if not isinstance(e, LoaderError) else str(e)), stop)
    finally:
        if stop.is_set():  # the consumer is gone: do not wait at exit for a batch nobody will read
            out.cancel_join_thread()


def reader_factory(cfg: TrainConfig, store: Any = None, dataset: str = "", version: int = 0, rank: int = 0,
                   world_size: int = 1) -> ReaderFactory:
    """Readers for this rank: sharding's ShardReader over `datasets/{dataset}/v{version}`, or the synthetic stream."""
    common = dict(frames=cfg.model.frames, size=cfg.model.size, shuffle_buffer=cfg.data.shuffle_buffer,
                  seed=cfg.run.seed, rank=rank, world_size=world_size)
    if cfg.data.source == "synthetic":
        from training.synthetic import SyntheticReader

        world = "turning" if cfg.objective.kind == "action" else cfg.data.synthetic_world
        return lambda worker, workers, epoch: SyntheticReader(worker=worker, num_workers=workers, epoch=epoch,
                                                              world=world, **common)
    try:
        from sharding.manifest import load_manifest
        from sharding.reader import ShardReader
    except ImportError as e:
        raise LoaderError(f"data.source=shards needs sharding.reader.ShardReader, which is not importable here "
                          f"({e}); install the sharding package or use data.source=synthetic") from e

    owner, opened = os.getpid(), {}
    manifest = load_manifest(store, dataset, version)  # a missing or withdrawn version is told here, once

    def make(worker: int, workers: int, epoch: int) -> Reader:
        # a sample that cannot be read (its mp4, json or a sensor array) is skipped and counted by reason (never
        # retried forever, never silent)
        return ShardReader(_own_store(store, owner, opened), dataset, version, worker=worker, num_workers=workers,
                           epoch=epoch, on_error="skip", manifest=manifest, **common)

    return make


def _own_store(store: Any, owner: int, opened: dict[int, Any]) -> Any:
    """`store`, or in a forked loader process a fresh S3 client: a forked copy would share the parent's sockets."""
    pid = os.getpid()
    if pid == owner:
        return store
    from alliance.store import S3Store

    if pid not in opened:
        opened[pid] = S3Store(store.url, store.settings) if isinstance(store, S3Store) else store
    return opened[pid]


def measure_loader(factory: ReaderFactory, cfg: TrainConfig, batches: int) -> float:
    """Clips per second the loader delivers when nothing else consumes (for the benchmark)."""
    loader = ClipLoader(factory, cfg)
    started = time.perf_counter()
    count = 0
    for count, _ in enumerate(loader, start=1):
        if count >= batches:
            break
    loader.close()
    return count * cfg.data.batch_size / (time.perf_counter() - started)

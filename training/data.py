"""The streaming loader: reader threads (sharding's ShardReader or the synthetic stream) -> batches, resumable exactly."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
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


def _flip(key: str, seed: int, epoch: int) -> bool:
    return hashlib.sha256(f"{seed}:{epoch}:{key}".encode()).digest()[0] % 2 == 1


def collate(samples: list[Any], cfg: TrainConfig, epoch: int = 0) -> ClipBatch:
    """Stack samples (checked by `sample_problem` first) into a ClipBatch."""
    frames = np.stack([s.frames for s in samples])
    if cfg.data.hflip:
        for i, s in enumerate(samples):
            if _flip(s.key, cfg.run.seed, epoch):
                frames[i] = frames[i][:, :, ::-1]
    actions = np.stack([imu_actions(s.sensors.get(cfg.objective.action_stream, np.zeros((0, 0), np.float32)),
                                    cfg.model.tubelet, cfg.objective.action_dim) for s in samples])
    labels = torch.tensor([int(s.meta.get("label", -1)) if isinstance(s.meta, dict) else -1 for s in samples])
    return ClipBatch(frames=torch.from_numpy(np.ascontiguousarray(frames)), actions=torch.from_numpy(actions),
                     keys=tuple(s.key for s in samples), labels=labels)


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
    return None


class ClipLoader:
    """`workers` threads, each owning one reader (worker i of n) and filling its own queue with whole batches.

    Batch k comes from worker k mod n, so the order is fixed, and each batch carries the reader state right after
    it: the state of the last consumed batch of every worker plus the next worker index is an exact resume point.
    Decoding (PyAV) and numpy release the GIL, so threads overlap decode with the step.
    """

    def __init__(self, factory: ReaderFactory, cfg: TrainConfig):
        self.factory = factory
        self.cfg = cfg
        self.workers = max(1, cfg.data.workers)
        self.positions: list[dict] = [{"epoch": 0, "reader": None} for _ in range(self.workers)]
        self.next_worker = 0
        self.rejected: Counter[str] = Counter()  # samples the loader refused, by reason
        self.reader_failures: dict[int, dict[str, int]] = {}  # what each worker's reader skipped (decode_failed)
        self.samples = 0
        self._lock = threading.Lock()
        self._queues: list[queue.Queue] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

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
                item = self._queues[w].get()
                if isinstance(item, BaseException):
                    raise LoaderError(f"loader worker {w} failed: {item}") from item
                self.positions[w] = item.state
                self.next_worker = (w + 1) % self.workers
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        for q in self._queues:  # unblock producers waiting on a full queue
            while not q.empty():
                q.get_nowait()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def _start(self) -> None:
        self._stop.clear()
        self._queues = [queue.Queue(maxsize=max(1, self.cfg.data.prefetch)) for _ in range(self.workers)]
        self._threads = [threading.Thread(target=self._work, args=(w, dict(self.positions[w])), daemon=True,
                                          name=f"clip-loader-{w}") for w in range(self.workers)]
        for t in self._threads:
            t.start()

    def _put(self, w: int, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queues[w].put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, w: int, position: dict) -> None:
        epoch, reader_state = int(position["epoch"]), position["reader"]
        batch_size = self.cfg.data.batch_size
        try:
            while not self._stop.is_set():
                reader = self.factory(w, self.workers, epoch)
                if reader_state is not None:
                    reader.load_state_dict(reader_state)
                produced, pending = 0, []
                for sample in reader:
                    if self._stop.is_set():
                        return
                    problem = sample_problem(sample, self.cfg)
                    with self._lock:
                        self.samples += 1
                        if problem:
                            self.rejected[problem] += 1
                    if problem:
                        continue
                    pending.append(sample)
                    if len(pending) == batch_size:
                        state = {"epoch": epoch, "reader": reader.state_dict()}
                        self.reader_failures[w] = dict(getattr(reader, "failures", {}))
                        if not self._put(w, LoadedBatch(collate(pending, self.cfg, epoch), state)):
                            return
                        produced, pending = produced + 1, []
                if produced == 0 and reader_state is None:
                    raise LoaderError(
                        f"worker {w} of {self.workers} read a whole epoch without one full batch of "
                        f"{batch_size} usable clips (skipped: {dict(self.skipped) or 'none'}); use a smaller "
                        f"data.batch_size or fewer data.workers, or a larger dataset version")
                epoch, reader_state = epoch + 1, None  # the partial batch is dropped, so resume stays exact
        except BaseException as e:  # handed to the consuming thread, which raises it with the worker named
            self._put(w, e)


def reader_factory(cfg: TrainConfig, store: Any = None, dataset: str = "", version: int = 0, rank: int = 0,
                   world_size: int = 1) -> ReaderFactory:
    """Readers for this rank: sharding's ShardReader over `datasets/{dataset}/v{version}`, or the synthetic stream."""
    common = dict(frames=cfg.model.frames, size=cfg.model.size, shuffle_buffer=cfg.data.shuffle_buffer,
                  seed=cfg.run.seed, rank=rank, world_size=world_size)
    if cfg.data.source == "synthetic":
        from training.synthetic import SyntheticReader

        return lambda worker, workers, epoch: SyntheticReader(worker=worker, num_workers=workers, epoch=epoch,
                                                              **common)
    try:
        from sharding.reader import ShardReader
    except ImportError as e:
        raise LoaderError(f"data.source=shards needs sharding.reader.ShardReader, which is not importable here "
                          f"({e}); install the sharding package or use data.source=synthetic") from e

    def make(worker: int, workers: int, epoch: int) -> Reader:
        # a clip that fails to decode is skipped and counted (never retried forever, never silent)
        return ShardReader(store, dataset, version, worker=worker, num_workers=workers, epoch=epoch,
                           on_error="skip", **common)

    return make


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

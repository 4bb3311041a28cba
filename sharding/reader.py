"""Torch-free streaming reader of a dataset version: split by node and worker, shuffled, resumable, decoded."""

from __future__ import annotations

import io
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from alliance.store import ObjectStore
from sharding.errors import DatasetError, SampleError
from sharding.manifest import Manifest, load_manifest
from sharding.tario import iter_samples


@dataclass(frozen=True)
class Sample:
    """One decoded training sample."""

    key: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    sensors: dict[str, np.ndarray]  # float32 [T, C], rows picked at the returned frames
    meta: dict  # the sample's json, plus "frame_indices" (which decoded frames were returned) and "shard"


@dataclass(frozen=True)
class RawSample:
    """A sample as it lies in the shard, before decoding: cheap to skip when resuming."""

    key: str
    members: dict[str, bytes]
    shard: int


def decode_frames(mp4: bytes, frames: int, size: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """`frames` frames spread evenly over the clip (repeated if it is shorter), short side resized to `size`,
    centre-cropped to size x size; returns (uint8 [T, size, size, 3], indices of the decoded frames used)."""
    import av

    try:
        with av.open(io.BytesIO(mp4), mode="r", format="mp4") as container:
            if not container.streams.video:
                raise DatasetError(f"{where}: the mp4 has no video stream; rebuild the version from a good clip")
            stream = container.streams.video[0]
            # One decoder thread: readers scale by worker processes, and per-clip decoder threads on short
            # clips cost more to start than they save (the decoded frames are the same either way).
            stream.codec_context.thread_count = 1
            decoded = list(container.decode(stream))
    except av.error.FFmpegError as e:
        raise DatasetError(f"{where}: the mp4 does not decode ({e}); run `alliance datasets verify`") from e
    if not decoded:
        raise DatasetError(f"{where}: the mp4 decodes to no frames; rebuild the version from a good clip")
    indices = np.linspace(0, len(decoded) - 1, frames).round().astype(np.int64)
    out = np.empty((frames, size, size, 3), np.uint8)
    converted: dict[int, np.ndarray] = {}
    for slot, index in enumerate(indices.tolist()):
        if index not in converted:
            converted[index] = _resize_crop(decoded[index], size)
        out[slot] = converted[index]
    return out, indices


_local = threading.local()


def _reformatter() -> Any:
    """This thread's scaler (frame.reformat() would build a new swscale context for every frame); a forked child
    builds its own, never one whose state was made in its parent."""
    if getattr(_local, "pid", None) != os.getpid():
        from av.video.reformatter import VideoReformatter

        _local.reformatter, _local.pid = VideoReformatter(), os.getpid()
    return _local.reformatter


def _resize_crop(frame: Any, size: int) -> np.ndarray:
    h, w = frame.height, frame.width
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    # one scaling thread, on the caller's: swscale's own thread pool does not survive a fork (a loader worker forked
    # after its parent had scaled frames hung for ever), and readers scale by worker processes anyway
    image = _reformatter().reformat(frame, width=new_w, height=new_h, format="rgb24", threads=1).to_ndarray()
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top:top + size, left:left + size]


def pick_rows(array: np.ndarray, indices: np.ndarray, clip_frames: int) -> np.ndarray:
    """Rows of a per-frame sensor array at the chosen frame indices (scaled if its length differs)."""
    rows = array.shape[0]
    if rows == 0:
        return np.zeros((len(indices),) + array.shape[1:], np.float32)
    if rows != clip_frames and clip_frames > 0:
        indices = np.minimum((indices * rows) // clip_frames, rows - 1)
    return np.ascontiguousarray(array[np.minimum(indices, rows - 1)], dtype=np.float32)


def _meta(raw: RawSample, where: str) -> dict:
    try:
        meta = json.loads(raw.members["json"])
        clip_frames = int(meta.get("frames") or 0)
    except (ValueError, TypeError, AttributeError) as e:  # not JSON, not UTF-8, not an object, frames not a number
        raise SampleError(f"{where}:{raw.key}.json is not the sample's metadata object ({e}); run "
                          f"`alliance datasets verify`", "bad_json") from e
    if clip_frames < 0:
        raise SampleError(f"{where}:{raw.key}.json says frames={clip_frames}", "bad_json")
    return meta


def _sensor(data: bytes, where: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.ndim == 0 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"a {array.ndim}-d {array.dtype} array, not per-frame numbers")
        return array.reshape(array.shape[0], -1)
    except (ValueError, OSError, EOFError) as e:  # not .npy, truncated, pickled objects, a scalar
        raise SampleError(f"{where} is not a per-frame sensor array ({e}); run `alliance datasets verify`",
                          "bad_sensor_array") from e


def decode_sample(raw: RawSample, frames: int, size: int, where: str) -> Sample:
    """The sample's frames, sensor rows and metadata; SampleError naming the member that cannot be read."""
    if "mp4" not in raw.members or "json" not in raw.members:
        raise SampleError(f"{where}: sample {raw.key} lacks its .mp4 or .json member; run `alliance datasets verify`",
                          "missing_member")
    meta = _meta(raw, where)
    try:
        video, indices = decode_frames(raw.members["mp4"], frames, size, f"{where}:{raw.key}.mp4")
    except DatasetError as e:
        raise SampleError(str(e), "decode_failed") from e
    clip_frames = int(meta.get("frames") or 0) or int(indices.max()) + 1
    sensors: dict[str, np.ndarray] = {}
    for ext, data in sorted(raw.members.items()):
        if ext.endswith(".npy"):
            sensors[ext[:-4]] = pick_rows(_sensor(data, f"{where}:{raw.key}.{ext}"), indices, clip_frames)
    meta["frame_indices"] = indices.tolist()
    meta["shard"] = raw.shard
    return Sample(raw.key, video, sensors, meta)


class ShardReader:
    """Iterates one version's samples for one (rank, worker) slot; slots never share a sample within an epoch.

    With at least as many shards as slots, each slot reads whole shards (shard order shuffled per epoch when
    shuffle_buffer > 0); with fewer, every slot reads every shard and keeps the samples whose position modulo
    the number of slots is its own. A finished pass advances `epoch`. `state_dict()` after k yielded samples
    and `load_state_dict()` on a fresh reader continue with exactly sample k+1 of the same order.

    The constructor does no I/O: the manifest is read on first use (`manifest`), or given (`manifest=`, a loader
    building one reader per worker). `ShardReader.open` reads it at once, so a missing or withdrawn version is told
    where the reader is made. With on_error="skip", a sample that cannot be read (its mp4, json or a sensor array)
    is skipped and counted in `failures` by reason; with "raise" (the default) it raises SampleError naming it.
    """

    def __init__(self, store: ObjectStore, dataset: str, version: int, *, frames: int = 16, size: int = 64,
                 shuffle_buffer: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, epoch: int = 0, on_error: str = "raise", manifest: Manifest | None = None):
        if not (0 <= rank < world_size) or not (0 <= worker < num_workers):
            raise DatasetError(f"reader slot rank={rank}/{world_size} worker={worker}/{num_workers} is out of range")
        if on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error={on_error!r}: use 'raise' or 'skip'")
        if manifest is not None and (manifest.name, manifest.version) != (dataset, version):
            raise DatasetError(f"reader of {dataset}@v{version} given the manifest of {manifest.ref}")
        self.store = store
        self.dataset, self.version = dataset, version
        self._manifest = manifest
        self.frames, self.size = frames, size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        self.epoch = epoch
        self.on_error = on_error
        self.yielded = 0  # samples yielded so far in this epoch
        self.failures: Counter[str] = Counter()

    @classmethod
    def open(cls, store: ObjectStore, dataset: str, version: int, **options: Any) -> "ShardReader":
        """A reader whose manifest is read now: a version that does not exist or was withdrawn raises here."""
        return cls(store, dataset, version, manifest=load_manifest(store, dataset, version), **options)

    @property
    def manifest(self) -> Manifest:
        """The version's manifest, read on first use."""
        if self._manifest is None:
            self._manifest = load_manifest(self.store, self.dataset, self.version)
        return self._manifest

    @property
    def slot(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def slots(self) -> int:
        return self.world_size * self.num_workers

    def urls(self) -> list[str]:
        """The shard URLs of this version, in manifest order (for stock WebDataset and other tools)."""
        return [self.store.describe(key) for key in self.manifest.shard_keys]

    def _shard_order(self) -> list[int]:
        order = list(range(len(self.manifest.shards)))
        if self.shuffle_buffer > 0:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def raw_samples(self) -> Iterator[RawSample]:
        """This slot's samples of this epoch, undecoded, before the shuffle buffer."""
        order = self._shard_order()
        whole_shards = len(order) >= self.slots
        mine = order[self.slot::self.slots] if whole_shards else order
        position = 0
        for shard in mine:
            entry = self.manifest.shards[shard]
            if not whole_shards and all((position + i) % self.slots != self.slot for i in range(entry.samples)):
                position += entry.samples
                continue
            with self.store.open_read(entry.key) as stream:
                for key, members in iter_samples(stream, self.store.describe(entry.key)):
                    take = whole_shards or position % self.slots == self.slot
                    position += 1
                    if take:
                        yield RawSample(key, members, shard)

    def _shuffled(self) -> Iterator[RawSample]:
        source = self.raw_samples()
        if self.shuffle_buffer <= 1:
            yield from source
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.slot, 1])
        buffer: list[RawSample] = []
        for raw in source:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(raw)
                continue
            pick = int(rng.integers(len(buffer)))
            buffer[pick], raw = raw, buffer[pick]
            yield raw
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def __iter__(self) -> Iterator[Sample]:
        skip = self.yielded
        position = 0
        for raw in self._shuffled():
            position += 1
            if position <= skip:
                continue  # resuming: replay the order without decoding
            where = self.store.describe(self.manifest.shards[raw.shard].key)
            try:
                sample = decode_sample(raw, self.frames, self.size, where)
            except SampleError as e:
                if self.on_error == "raise":
                    raise
                self.failures[e.reason] += 1
                self.yielded = position
                continue
            self.yielded = position
            yield sample
        self.epoch += 1
        self.yielded = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.yielded = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.version, "epoch": self.epoch,
                "yielded": self.yielded, "seed": self.seed, "shuffle_buffer": self.shuffle_buffer,
                "rank": self.rank, "world_size": self.world_size, "worker": self.worker,
                "num_workers": self.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for name in ("dataset", "version", "seed", "shuffle_buffer", "rank", "world_size", "worker", "num_workers"):
            if state.get(name) != mine[name]:
                raise DatasetError(f"reader state was saved with {name}={state.get(name)!r} but this reader has "
                                   f"{mine[name]!r}; resume with the same dataset version and reader settings")
        self.epoch, self.yielded = int(state["epoch"]), int(state["yielded"])

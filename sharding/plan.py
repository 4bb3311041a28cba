"""Deterministic plans: selection rows become samples, samples are shuffled by a seed and packed into shards."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from alliance.store import ObjectStore
from sharding.errors import DatasetError
from sharding.layout import sample_key, stream_suffix
from sharding.requests import map_requests
from sharding.tario import BLOCK


@dataclass(frozen=True)
class ShardConfig:
    """How a version is cut into shards; saved in its manifest."""

    target_bytes: int = 256 << 20  # a shard closes before it would exceed this (a bigger single sample still fits)
    max_samples: int = 0  # 0: no limit by count
    seed: int = 0  # the shuffle that mixes partners and clusters across shards


@dataclass(frozen=True)
class SourceMember:
    """A tar member copied from a store object: '{key}.{ext}' <- store key, of a known size."""

    ext: str
    key: str
    size: int


@dataclass(frozen=True)
class PlannedSample:
    """One sample: its key, its json (canonical text), the objects it copies, and its lineage for the index."""

    key: str
    clip_id: str
    meta_json: str
    members: tuple[SourceMember, ...]
    partner: str
    recording_id: str
    delivery: str
    license: str
    consent: str  # JSON text
    quality: str  # JSON text
    cluster: int
    t0: float
    t1: float

    @property
    def tar_bytes(self) -> int:
        sizes = [len(self.meta_json.encode()), *(m.size for m in self.members)]
        return sum(BLOCK + size + (-size % BLOCK) for size in sizes)

    @property
    def seconds(self) -> float:
        return max(0.0, self.t1 - self.t0)


@dataclass(frozen=True)
class ShardPlan:
    """What shard `index` of a version holds, in order."""

    index: int
    samples: tuple[PlannedSample, ...]


@dataclass(frozen=True)
class VersionPlan:
    """A whole version's content, fixed before any byte is written; its digest names the write."""

    shards: tuple[ShardPlan, ...]
    config: dict[str, Any]
    source: dict[str, Any]
    sha256: str = field(default="")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "VersionPlan":
        raw = json.loads(data)
        shards = tuple(ShardPlan(s["index"], tuple(
            PlannedSample(**{**p, "members": tuple(SourceMember(**m) for m in p["members"])}) for p in s["samples"]))
            for s in raw["shards"])
        return cls(shards, raw["config"], raw["source"], raw["sha256"])

    @property
    def samples(self) -> int:
        return sum(len(s.samples) for s in self.shards)


def _shard_fields(shard: ShardPlan) -> dict[str, Any]:
    """asdict(shard) without its deep copies (the same JSON, several times faster on big plans)."""
    return {"index": shard.index, "samples": [
        {**vars(sample), "members": [vars(member) for member in sample.members]} for sample in shard.samples]}


def digest(shards: tuple[ShardPlan, ...], config: Mapping[str, Any], source: Mapping[str, Any]) -> str:
    body = json.dumps({"shards": [_shard_fields(s) for s in shards], "config": dict(config), "source": dict(source)},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


# The clip table's quality signals; curation's own `quality` JSON, where it has the same name, wins.
SIGNALS = ("luma_mean", "luma_std", "dark_fraction", "bright_fraction", "frame_diff_mean", "sharpness",
           "imu_gyro_rms", "imu_accel_std")


def _json_field(text: str | None, where: str) -> Any:
    if text in (None, ""):
        return {}
    try:
        return json.loads(text)
    except ValueError as e:
        raise DatasetError(f"{where}: not valid JSON ({e}); fix the clip table that produced this selection") from e


def _first(meta: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if meta.get(name) not in (None, ""):
            return meta[name]
    return None


def recording_consent(recording: Mapping[str, Any]) -> dict[str, Any]:
    """The consent of a recording's metadata as {scope, expires, ...}: a contract's `consent` object, or the flat
    `consent_scope` / `consent_expires` that ingest writes for catalog recordings; {} for a folder without one."""
    consent = _first(recording, "consent") or {}
    consent = dict(consent) if isinstance(consent, dict) else {"scope": consent}
    for name, *aliases in (("scope", "consent_scope"), ("expires", "consent_expiry", "consent_expires")):
        value = _first(recording, *aliases)
        if value is not None and name not in consent:
            consent[name] = value
    return consent


def row_consent(row: Mapping[str, Any]) -> dict[str, Any]:
    """The consent a selection row's clip carries (see `recording_consent`)."""
    where = f"selection row {row.get('clip_id')}"
    return recording_consent(_json_field(row.get("recording_meta"), f"{where}: recording_meta"))


def sample_meta(row: Mapping[str, Any]) -> dict[str, Any]:
    """The sample's json: lineage, rights and signals a trainer or an auditor needs, from a selection row."""
    where = f"selection row {row.get('clip_id')}"
    recording = _json_field(row.get("recording_meta"), f"{where}: recording_meta")
    consent = recording_consent(recording)
    return {
        "clip_id": row["clip_id"],
        "partner": row["partner"],
        "recording": row["recording_id"],
        "delivery": row.get("delivery") or _first(recording, "delivery"),
        "device": _first(recording, "device"),
        "license": _first(recording, "license"),
        "consent": consent,
        "faces_allowed": _first(recording, "faces_allowed", "faces"),
        "t0": row["t0"], "t1": row["t1"], "fps": row.get("fps"), "frames": row.get("frames"),
        "width": row.get("width"), "height": row.get("height"),
        "sensors": _json_field(row.get("sensor_channels"), f"{where}: sensor_channels"),
        "quality": {**{name: row[name] for name in SIGNALS if row.get(name) is not None},
                    **_json_field(row.get("quality"), f"{where}: quality")},
        "source": {"codec": row.get("source_codec"), "width": row.get("source_width"),
                   "height": row.get("source_height")},
        "sensor_status": row.get("sensor_status"),
        "cluster": row.get("cluster") if row.get("cluster") is not None else -1,
        "recording_meta": recording,
    }


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def plan_samples(rows: Iterable[Mapping[str, Any]], store: ObjectStore, *, threads: int = 8) -> list[PlannedSample]:
    """Kept selection rows as samples; sizes of their clip and sensor objects come from the store."""
    kept = [r for r in rows if r.get("kept")]
    seen: dict[str, str] = {}
    sources: list[tuple[Mapping[str, Any], list[tuple[str, str]]]] = []
    for row in kept:
        key = sample_key(row["clip_id"])
        if key in seen:
            if seen[key] == row["clip_id"]:
                continue  # the same clip twice in a selection is one sample
            raise DatasetError(f"clips {seen[key]!r} and {row['clip_id']!r} map to one sample key {key!r}; "
                               f"rename one in the clip table")
        seen[key] = row["clip_id"]
        members = [("mp4", row["clip_key"])]
        sensor_keys = _json_field(row.get("sensor_keys"), f"selection row {row['clip_id']}: sensor_keys")
        members += [(f"{stream_suffix(stream)}.npy", k) for stream, k in sorted(sensor_keys.items())]
        sources.append((row, members))
    sizes = object_sizes(store, sorted({k for _, members in sources for _, k in members}), threads)
    samples = []
    for row, members in sources:
        meta = sample_meta(row)
        samples.append(PlannedSample(
            key=sample_key(row["clip_id"]), clip_id=row["clip_id"], meta_json=canonical(meta),
            members=tuple(SourceMember(ext, k, sizes[k]) for ext, k in members),
            partner=row["partner"], recording_id=row["recording_id"], delivery=str(meta["delivery"] or ""),
            license=meta["license"] if isinstance(meta["license"], str) else canonical(meta["license"]),
            consent=canonical(meta["consent"]), quality=canonical(meta["quality"]), cluster=int(meta["cluster"]),
            t0=float(row["t0"]), t1=float(row["t1"])))
    return samples


def object_sizes(store: ObjectStore, keys: list[str], threads: int = 8, *, quick_s: float = 0.02) -> dict[str, int]:
    """Sizes of the objects (HEADs on S3, in threads once they turn out to wait on the network)."""
    return dict(zip(keys, map_requests(store.size, keys, threads, quick_s=quick_s)))


def shuffle_order(samples: Iterable[PlannedSample], seed: int) -> list[PlannedSample]:
    """A seeded order that depends on the samples only, not on the order the selection listed them in."""
    return sorted(samples, key=lambda s: (hashlib.sha256(f"{seed}:{s.key}".encode()).digest(), s.key))


def pack(samples: list[PlannedSample], config: ShardConfig) -> tuple[ShardPlan, ...]:
    """Consecutive samples fill a shard until the next would pass target_bytes or max_samples."""
    shards: list[ShardPlan] = []
    current: list[PlannedSample] = []
    size = 0
    for sample in samples:
        full = config.max_samples and len(current) >= config.max_samples
        if current and (full or size + sample.tar_bytes > config.target_bytes):
            shards.append(ShardPlan(len(shards), tuple(current)))
            current, size = [], 0
        current.append(sample)
        size += sample.tar_bytes
    if current:
        shards.append(ShardPlan(len(shards), tuple(current)))
    return tuple(shards)


def plan_version(samples: list[PlannedSample], config: ShardConfig, source: Mapping[str, Any]) -> VersionPlan:
    if not samples:
        raise DatasetError(f"nothing to shard: the selection {source.get('selection', '')!r} keeps no clips; "
                           f"check `kept` in its table or pick another selection run")
    shards = pack(shuffle_order(samples, config.seed), config)
    cfg = asdict(config)
    return VersionPlan(shards, cfg, dict(source), digest(shards, cfg, source))

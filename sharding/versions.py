"""Dataset versions exactly once: claim, write shards resumably, commit index and manifest last (redaction: redact.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from alliance.errors import KeyNotFound
from alliance.store import ObjectStore
from sharding.errors import DatasetError
from sharding.errors import VersionNotFound
from sharding.layout import index_key, manifest_key, parse_ref, plan_key, receipt_key, shard_key, work_prefix
from sharding.manifest import Manifest, ShardEntry, latest_version, load_manifest
from sharding.plan import ShardPlan, VersionPlan, canonical
from sharding.requests import map_requests
from sharding.tario import TarSink

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
Mapper = Callable[[Callable[[T], R], Sequence[T]], Iterable[R]]
# Shards written at once by default: each stream's sha256 runs on its own thread beside the copy, so two
# streams keep two cores busy; more would only add memory (a few MiB per stream, a multipart window on S3).
STREAMS = 2

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),            # the WebDataset __key__
    ("clip_id", pa.string()),
    ("shard", pa.int32()),           # position in the manifest's shard list
    ("shard_key", pa.string()),      # store key of that shard (a redacted version may reuse its parent's)
    ("json_offset", pa.int64()), ("json_size", pa.int64()),
    ("mp4_offset", pa.int64()), ("mp4_size", pa.int64()),
    ("members", pa.string()),        # JSON {extension: [data offset, size]} for every member, sensors included
    ("partner", pa.string()),
    ("recording_id", pa.string()),
    ("delivery", pa.string()),
    ("license", pa.string()),
    ("consent", pa.string()),        # JSON
    ("quality", pa.string()),        # JSON
    ("cluster", pa.int32()),
    ("t0", pa.float64()), ("t1", pa.float64()),
    ("seconds", pa.float64()),
])


@dataclass(frozen=True)
class ShardReceipt:
    """Proof that a shard object was committed: size, hash and where each sample's members lie."""

    index: int
    key: str
    bytes: int
    sha256: str
    samples: int
    spans: dict[str, dict[str, list[int]]]  # sample key -> extension -> [data offset, size]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def entry(self) -> ShardEntry:
        return ShardEntry(self.key, self.bytes, self.sha256, self.samples)


@dataclass(frozen=True)
class Claim:
    """A version number reserved for one plan; `committed` is set when that plan was already committed.

    `fresh` means this call made the claim: no earlier attempt can have left shards worth resuming.
    """

    name: str
    version: int
    plan_sha256: str
    committed: Manifest | None = None
    fresh: bool = False


def sequential(fn: Callable[[T], R], items: Sequence[T]) -> Iterable[R]:
    """The default Mapper: each item in turn, in this process (Beam passes its own to spread shards on workers)."""
    return [fn(item) for item in items]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def claim_version(store: ObjectStore, name: str, plan_sha256: str, *, samples: int = 0, shards: int = 0) -> Claim:
    """The version this plan is (or will be) committed as; re-running a plan resumes or returns its version."""
    latest = latest_version(store, name) or 0
    for version in range(latest, 0, -1):
        manifest = load_manifest(store, name, version, allow_withdrawn=True)
        if manifest.plan_sha256 == plan_sha256:
            return Claim(name, version, plan_sha256, manifest)
    version = latest + 1
    doc = canonical({"plan_sha256": plan_sha256, "claimed_at": _now(), "samples": samples, "shards": shards}).encode()
    if store.put_if_absent(plan_key(name, version), doc):
        return Claim(name, version, plan_sha256, fresh=True)
    holder = json.loads(store.get_bytes(plan_key(name, version)))
    if holder.get("plan_sha256") == plan_sha256:
        return Claim(name, version, plan_sha256)  # our own crashed or concurrent attempt: resume it
    raise DatasetError(
        f"{name}@v{version} is claimed by an unfinished write of another plan (claimed {holder.get('claimed_at')}, "
        f"{holder.get('samples')} samples); if it is still running, wait for it and run again; if it crashed, "
        f"finish it by re-running the command that started it, or drop it with `alliance datasets gc --grace 0`")


def load_receipt(store: ObjectStore, name: str, version: int, shard: int) -> ShardReceipt | None:
    """The stored receipt, or None: missing, or unreadable (receipts are not fsynced; a power loss may leave
    one empty), in which case the shard is simply written again."""
    key = receipt_key(name, version, shard)
    try:
        return ShardReceipt(**json.loads(store.get_bytes(key)))
    except KeyNotFound:
        return None
    except (ValueError, TypeError) as e:
        log.warning("%s is unreadable (%s); shard %d will be written again", store.describe(key), e, shard)
        return None


def shard_done(store: ObjectStore, name: str, version: int, shard: int) -> ShardReceipt | None:
    """The receipt of shard `shard` when its object is present at the receipted size, else None."""
    receipt = load_receipt(store, name, version, shard)
    if receipt is not None:
        try:
            if store.size(receipt.key) == receipt.bytes:
                return receipt
        except KeyNotFound:
            return None
    return None


def write_planned_shard(store: ObjectStore, name: str, version: int, shard: ShardPlan, *,
                        resume: bool = True) -> ShardReceipt:
    """Stream one shard into the store (multipart on S3), make it durable, then store its receipt.

    With resume=True a shard that already has a receipt is skipped."""
    if resume:
        done = shard_done(store, name, version, shard.index)
        if done is not None:
            return done
    return seal_shard(store, name, version, stream_shard(store, name, version, shard))


def stream_shard(store: ObjectStore, name: str, version: int, shard: ShardPlan) -> ShardReceipt:
    """Write one shard's bytes (on file:// not yet fsynced: `seal_shard` does it); its receipt, not yet stored."""
    key = shard_key(name, version, shard.index)
    spans: dict[str, dict[str, list[int]]] = {}
    with store.open_write(key, sync=False) as writer, closing(TarSink(writer)) as tar:
        for sample in shard.samples:
            where = spans[sample.key] = {}
            span = tar.add_bytes(f"{sample.key}.json", sample.meta_json.encode())
            where["json"] = [span.offset, span.size]
            for member in sample.members:
                with store.open_read(member.key) as src:
                    span = tar.add_stream(f"{sample.key}.{member.ext}", member.size, src, store.describe(member.key))
                where[member.ext] = [span.offset, span.size]
        total, sha = tar.finish()
    return ShardReceipt(shard.index, key, total, sha, len(shard.samples), spans)


def seal_shard(store: ObjectStore, name: str, version: int, receipt: ShardReceipt) -> ShardReceipt:
    """Make the shard durable, then store its receipt: a receipt never vouches for bytes a power loss could take.

    The receipt itself is not fsynced: losing it only means the shard is written again."""
    store.sync([receipt.key])
    with store.open_write(receipt_key(name, version, receipt.index), sync=False) as writer:
        writer.write(receipt.to_json())
    return receipt


def _row_of(sample: Any, shard: int, shard_key_: str, spans: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "key": sample.key, "clip_id": sample.clip_id, "shard": shard, "shard_key": shard_key_,
        "json_offset": spans["json"][0], "json_size": spans["json"][1],
        "mp4_offset": spans["mp4"][0], "mp4_size": spans["mp4"][1],
        "members": canonical(spans), "partner": sample.partner, "recording_id": sample.recording_id,
        "delivery": sample.delivery, "license": sample.license, "consent": sample.consent,
        "quality": sample.quality, "cluster": sample.cluster, "t0": sample.t0, "t1": sample.t1,
        "seconds": sample.seconds,
    }


def index_bytes(rows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=65536)
    return sink.getvalue()


def read_index(store: ObjectStore, name: str, version: int) -> pa.Table:
    key = index_key(name, version)
    try:
        data = store.get_bytes(key)
    except KeyNotFound as e:
        raise DatasetError(f"{store.describe(key)} is missing; run `alliance datasets verify {name}@v{version}`") from e
    return pq.read_table(io.BytesIO(data))


def commit_version(store: ObjectStore, claim: Claim, entries: list[ShardEntry], rows: list[dict[str, Any]], *,
                   parent: int | None, source: dict[str, Any], config: dict[str, Any],
                   redaction: dict[str, Any] | None = None) -> Manifest:
    """Check every shard is present at its size, write the index, then the manifest only if absent."""
    for entry, size in zip(entries, map_requests(lambda entry: _size_or_none(store, entry.key), entries)):
        if size is None:
            raise DatasetError(f"{store.describe(entry.key)} is missing before commit; re-run the same command "
                               f"to write it")
        if size != entry.bytes:
            raise DatasetError(f"{store.describe(entry.key)} has {size} bytes, its receipt says {entry.bytes}; "
                               f"re-run the same command to rewrite it")
    data = index_bytes(rows)
    store.put_bytes(index_key(claim.name, claim.version), data)
    partners: dict[str, dict[str, float]] = defaultdict(lambda: {"samples": 0, "hours": 0.0})
    clusters: Counter[str] = Counter()
    for row in rows:
        partners[row["partner"]]["samples"] += 1
        partners[row["partner"]]["hours"] += row["seconds"] / 3600
        clusters[str(row["cluster"])] += 1
    manifest = Manifest(
        name=claim.name, version=claim.version, parent=parent, shards=tuple(entries), samples=len(rows),
        bytes=sum(e.bytes for e in entries), hours=round(sum(r["seconds"] for r in rows) / 3600, 6),
        partners={p: {"samples": v["samples"], "hours": round(v["hours"], 6)} for p, v in sorted(partners.items())},
        clusters=dict(sorted(clusters.items())),
        index={"key": index_key(claim.name, claim.version), "bytes": len(data),
               "sha256": hashlib.sha256(data).hexdigest()},
        source=source, config=config, plan_sha256=claim.plan_sha256, redaction=redaction)
    key = manifest_key(claim.name, claim.version)
    if not store.put_if_absent(key, manifest.to_json()):
        existing = load_manifest(store, claim.name, claim.version, allow_withdrawn=True)
        if existing.plan_sha256 != claim.plan_sha256:
            raise DatasetError(f"{claim.name}@v{claim.version} was committed by another plan meanwhile; "
                               f"run the command again to write the next version")
        manifest = existing
    clean_work(store, claim.name, claim.version)
    return manifest


def clean_work(store: ObjectStore, name: str, version: int) -> int:
    """Remove the claim and receipts of a committed version; returns how many objects went."""
    keys = [o.key for o in store.list(work_prefix(name, version))]
    map_requests(store.delete, keys)
    return len(keys)


def _size_or_none(store: ObjectStore, key: str) -> int | None:
    try:
        return store.size(key)
    except KeyNotFound:
        return None


def write_version(store: ObjectStore, name: str, plan: VersionPlan, *, parent: int | None = None,
                  map_shards: Mapper | None = None, streams: int = STREAMS) -> Manifest:
    """Write (or finish, or find) the version of this plan.

    Shards stream `streams` at a time (the default mapper), or through `map_shards`, e.g. a caller's pool."""
    claim = claim_version(store, name, plan.sha256, samples=plan.samples, shards=len(plan.shards))
    if claim.committed is not None:
        clean_work(store, name, claim.version)
        return claim.committed
    receipts = write_shards(store, claim, plan.shards, map_shards=map_shards, streams=streams)
    return finish_version(store, claim, plan, receipts, parent=parent)


def write_shards(store: ObjectStore, claim: Claim, shards: Sequence[ShardPlan], *, map_shards: Mapper | None = None,
                 streams: int = STREAMS, resume: bool | None = None) -> list[ShardReceipt]:
    """Every shard of the claim written, durable and receipted (those an earlier attempt finished are kept).

    resume (default: unless this run made the claim) looks for receipts first; a caller that has already left
    out the finished shards passes False. Shard N is sealed (fsync, receipt) in the background while later
    shards stream, so durability is never paid in the write path; the call returns only once every seal has."""
    resume = not claim.fresh if resume is None else resume

    def write(shard: ShardPlan) -> Future[ShardReceipt] | ShardReceipt:
        done = shard_done(store, claim.name, claim.version, shard.index) if resume else None
        if done is not None:
            return done
        receipt = stream_shard(store, claim.name, claim.version, shard)
        return sealer.submit(seal_shard, store, claim.name, claim.version, receipt)

    with ThreadPoolExecutor(2, thread_name_prefix="shard-seal") as sealer:
        if map_shards is None and streams > 1 and len(shards) > 1:
            with ThreadPoolExecutor(min(streams, len(shards)), thread_name_prefix="shard-stream") as pool:
                pending = list(pool.map(write, shards))
        else:
            pending = list((map_shards or sequential)(write, shards))
        return [r.result() if isinstance(r, Future) else r for r in pending]


def finish_version(store: ObjectStore, claim: Claim, plan: VersionPlan, receipts: list[ShardReceipt], *,
                   parent: int | None = None) -> Manifest:
    by_index = {r.index: r for r in receipts}
    missing = [s.index for s in plan.shards if s.index not in by_index]
    if missing:
        raise DatasetError(f"{claim.name}@v{claim.version}: shards {missing[:5]} have no receipt; re-run the same "
                           f"command to write them")
    rows = [_row_of(sample, shard.index, by_index[shard.index].key, by_index[shard.index].spans[sample.key])
            for shard in plan.shards for sample in shard.samples]
    entries = [by_index[s.index].entry() for s in plan.shards]
    return commit_version(store, claim, entries, rows, parent=parent, source=plan.source, config=plan.config)


def collect_receipts(store: ObjectStore, claim: Claim, plan: VersionPlan) -> list[ShardReceipt]:
    """Receipts of every planned shard whose object is present at its size (what parallel workers left)."""
    found = []
    for shard in plan.shards:
        receipt = shard_done(store, claim.name, claim.version, shard.index)
        if receipt is None:
            raise DatasetError(f"{store.describe(shard_key(claim.name, claim.version, shard.index))} was not "
                               f"written; re-run the same command to finish {claim.name}@v{claim.version}")
        found.append(receipt)
    return found


def resolve(store: ObjectStore, ref: str) -> tuple[str, int]:
    """'NAME@vN' -> (name, N); 'NAME' -> its latest committed version."""
    name, version = parse_ref(ref)
    if version is None:
        version = latest_version(store, name)
        if version is None:
            raise VersionNotFound(f"dataset {name!r} has no committed version; write one with "
                                  f"`alliance pipeline shard --name {name} --selection RUN`")
    return name, version

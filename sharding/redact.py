"""Redaction: a new version of a dataset without revoked recordings (only the shards holding them rewritten), the
versions and training runs that held them, and purging those versions."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from alliance.store import ObjectStore
from sharding.errors import DatasetError
from sharding.layout import manifest_key, receipt_key, shard_key, withdrawn_key
from sharding.manifest import latest_version, load_manifest
from sharding.plan import canonical
from sharding.tario import TarSink, split_name
from sharding.versions import (Mapper, ShardReceipt, claim_version, commit_version, read_index, sequential, shard_done)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewriteTask:
    """Shard `index` of the new version: `source`'s members minus the samples in `drop`."""

    index: int
    source: str
    drop: tuple[str, ...]


@dataclass(frozen=True)
class AffectedRun:
    """A training run that consumed a version holding revoked samples, itself or through the encoder it started from
    (`via`: the run whose encoder it took, `objective.encoder_from`; empty when it read the version itself)."""

    run: str
    dataset: str
    version: int
    checkpoints: tuple[str, ...]
    steps: int
    via: str = ""


@dataclass(frozen=True)
class RedactionReport:
    """What a redaction did: the new version, what left it, which shards were rewritten, whom it concerns."""

    name: str
    parent: int
    version: int | None  # None: nothing of the revoked recordings was in the parent, no new version
    revoked_recordings: tuple[str, ...]  # revoked recordings found in the parent
    removed_samples: int
    removed_by_partner: dict[str, int]
    rewritten_shards: tuple[str, ...]
    reused_shards: int
    dropped_shards: int
    versions_containing: tuple[int, ...]  # every committed version of the dataset that held them
    affected_runs: tuple[AffectedRun, ...]
    purged_shards: tuple[str, ...] = field(default_factory=tuple)
    manifest_key: str | None = None


def rewrite_shard(store: ObjectStore, name: str, version: int, task: RewriteTask) -> ShardReceipt:
    """Copy a shard without the dropped samples, member by member, in bounded memory."""
    done = shard_done(store, name, version, task.index)
    if done is not None:
        return done
    import tarfile

    key = shard_key(name, version, task.index)
    drop = set(task.drop)
    spans: dict[str, dict[str, list[int]]] = {}
    samples: list[str] = []
    with store.open_read(task.source) as src, store.open_write(key) as writer, closing(TarSink(writer)) as tar:
        try:
            with tarfile.open(fileobj=src, mode="r|") as archive:
                for info in archive:
                    sample, ext = split_name(info.name)
                    if not info.isreg() or sample is None or sample in drop:
                        continue
                    if sample not in spans:
                        spans[sample] = {}
                        samples.append(sample)
                    handle = archive.extractfile(info)
                    span = tar.add_stream(info.name, info.size, handle, f"{store.describe(task.source)}:{info.name}")
                    spans[sample][ext] = [span.offset, span.size]
        except tarfile.TarError as e:
            raise DatasetError(f"{store.describe(task.source)}: not a readable tar ({e}); run "
                               f"`alliance datasets verify` on the parent version") from e
        total, sha = tar.finish()
    receipt = ShardReceipt(task.index, key, total, sha, len(samples), spans)
    store.put_bytes(receipt_key(name, version, task.index), receipt.to_json())
    return receipt


def training_runs(store: ObjectStore) -> list[dict[str, Any]]:
    """Every `checkpoints/{run}/run.json` record (written by training), sorted by run id."""
    runs = []
    for info in store.list("checkpoints/"):
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2] == "run.json":
            try:
                runs.append(json.loads(store.get_bytes(info.key)))
            except ValueError as e:
                log.warning("%s: not valid JSON (%s); skipped in lineage", store.describe(info.key), e)
    return sorted(runs, key=lambda r: str(r.get("run")))


def _encoder_source(record: dict[str, Any]) -> str:
    """The run whose encoder a run started from (its config's objective.encoder_from: a run id or a checkpoint key)."""
    config = record.get("config")
    objective = config.get("objective") if isinstance(config, dict) else None
    ref = str(objective.get("encoder_from") or "") if isinstance(objective, dict) else ""
    return ref.removeprefix("checkpoints/").split("/")[0] if ref else ""


def affected_runs(runs: list[dict[str, Any]], name: str, versions: Iterable[int]) -> tuple[AffectedRun, ...]:
    """The runs (run.json records) that read NAME at one of `versions`, then every run that started from the encoder
    of an affected run, however many hops away (each names the run it took the encoder from)."""
    held = set(versions)
    found = [AffectedRun(str(r.get("run")), name, int(r.get("version")), tuple(r.get("checkpoints") or ()),
                         int(r.get("steps") or 0))
             for r in runs if r.get("dataset") == name and r.get("version") in held]
    sources = [(r, str(r.get("run")), _encoder_source(r)) for r in runs]
    by_run = {a.run: a for a in found}
    frontier = list(found)
    while frontier:
        upstream = {a.run: a for a in frontier}
        frontier = []
        for r, run, source in sources:
            if source in upstream and run not in by_run:
                origin = upstream[source]
                by_run[run] = AffectedRun(run, origin.dataset, origin.version, tuple(r.get("checkpoints") or ()),
                                          int(r.get("steps") or 0), via=source)
                frontier.append(by_run[run])
    return tuple(by_run.values())


def versions_containing(store: ObjectStore, name: str, recordings: set[str]) -> list[int]:
    found = []
    for version in range(1, (latest_version(store, name) or 0) + 1):
        index = read_index(store, name, version).column("recording_id").to_pylist()
        if recordings.intersection(index):
            found.append(version)
    return found


def redact(store: ObjectStore, name: str, version: int, revoked: Iterable[str], *, purge: bool = False,
           map_shards: Mapper | None = None) -> RedactionReport:
    """A new version of NAME@vN without the samples of `revoked` recordings.

    Only shards holding such samples are rewritten; the others are reused by key. The report names every
    committed version that held them and every training run (from checkpoints/*/run.json) that read one.
    With purge=True, the shards holding revoked samples are deleted from those versions, which are then
    marked withdrawn (readers refuse them and point to the redacted successor).
    """
    manifest = load_manifest(store, name, version)
    revoked_set = set(revoked)
    index = read_index(store, name, version).to_pylist()
    hit = [row for row in index if row["recording_id"] in revoked_set]
    containing = versions_containing(store, name, revoked_set) if revoked_set else []
    runs = affected_runs(training_runs(store), name, containing)
    found = tuple(sorted({row["recording_id"] for row in hit}))
    if not hit:
        return RedactionReport(name, version, None, found, 0, {}, (), len(manifest.shards), 0, tuple(containing),
                               runs)
    drop_by_shard: dict[int, list[str]] = defaultdict(list)
    for row in hit:
        drop_by_shard[row["shard"]].append(row["key"])
    source = {"redaction_of": version, "parent_plan_sha256": manifest.plan_sha256, "revoked_recordings": list(found)}
    plan_sha = hashlib.sha256(canonical({"name": name, **source}).encode()).hexdigest()
    claim = claim_version(store, name, plan_sha, samples=manifest.samples - len(hit), shards=len(manifest.shards))
    if claim.committed is not None:
        new = claim.committed
    else:
        # New shard positions: the parent's order, minus shards left empty.
        positions: dict[int, int] = {}
        tasks: list[RewriteTask] = []
        for old, entry in enumerate(manifest.shards):
            if old in drop_by_shard and len(drop_by_shard[old]) >= entry.samples:
                continue
            positions[old] = len(positions)
            if old in drop_by_shard:
                tasks.append(RewriteTask(positions[old], entry.key, tuple(sorted(drop_by_shard[old]))))
        receipts = {r.index: r for r in (map_shards or sequential)(
            lambda task: rewrite_shard(store, name, claim.version, task), tasks)}
        entries = []
        for old, entry in enumerate(manifest.shards):
            if old in positions:
                new_pos = positions[old]
                entries.append(receipts[new_pos].entry() if new_pos in receipts else entry)
        rows = []
        for row in index:
            if row["recording_id"] in revoked_set:
                continue
            new_pos = positions[row["shard"]]
            row = {**row, "shard": new_pos}
            if new_pos in receipts:
                spans = receipts[new_pos].spans[row["key"]]
                row.update(shard_key=receipts[new_pos].key, members=canonical(spans),
                           json_offset=spans["json"][0], json_size=spans["json"][1],
                           mp4_offset=spans["mp4"][0], mp4_size=spans["mp4"][1])
            rows.append(row)
        redaction = {"revoked_recordings": list(found), "removed_samples": len(hit),
                     "rewritten_shards": [receipts[i].key for i in sorted(receipts)]}
        new = commit_version(store, claim, entries, rows, parent=version, source=source, config=manifest.config,
                             redaction=redaction)
    removed_by_partner = dict(sorted(Counter(row["partner"] for row in hit).items()))
    rewritten = tuple((new.redaction or {}).get("rewritten_shards", ()))
    purged: list[str] = []
    if purge:
        purged = purge_versions(store, name, [v for v in containing if v != new.version], revoked_set, new.version)
    return RedactionReport(
        name, version, new.version, found, len(hit), removed_by_partner, rewritten,
        reused_shards=sum(1 for e in new.shards if e.key not in rewritten),
        dropped_shards=len(manifest.shards) - len(new.shards), versions_containing=tuple(containing),
        affected_runs=runs, purged_shards=tuple(purged), manifest_key=manifest_key(name, new.version))


def purge_versions(store: ObjectStore, name: str, versions: Sequence[int], revoked: set[str],
                   successor: int) -> list[str]:
    """Delete the shards of `versions` that hold revoked samples and mark those versions withdrawn."""
    keep = set(load_manifest(store, name, successor).shard_keys)
    purged: list[str] = []
    for version in versions:
        index = read_index(store, name, version).to_pylist()
        keys = sorted({row["shard_key"] for row in index if row["recording_id"] in revoked} - keep)
        doc = {"name": name, "version": version, "successor": successor,
               "revoked_recordings": sorted({r["recording_id"] for r in index if r["recording_id"] in revoked}),
               "purged_shards": keys}
        store.put_bytes(withdrawn_key(name, version), canonical(doc).encode())  # first: readers stop before bytes go
        for key in keys:
            store.delete(key)
        purged.extend(keys)
    return purged

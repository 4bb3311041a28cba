"""Garbage collection: what crashed or superseded writes left under datasets/, never a committed version's data."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from alliance.errors import KeyNotFound
from alliance.store import ObjectStore, S3Store
from sharding.layout import manifest_key, plan_key
from sharding.manifest import load_manifest, load_withdrawal

log = logging.getLogger(__name__)
_VERSION_DIR = re.compile(r"^datasets/(?P<name>[^/]+)/v(?P<version>\d+)/(?P<rest>.+)$")


@dataclass(frozen=True)
class GcReport:
    """What gc removed (or would remove with dry_run), and what it left because a write may still be running."""

    deleted: tuple[str, ...]
    bytes_freed: int
    kept_in_progress: tuple[str, ...]  # versions whose claim is younger than the grace period
    aborted_uploads: int
    dry_run: bool


def gc(store: ObjectStore, name: str | None = None, *, grace_s: float = 3600.0, dry_run: bool = False,
       now: datetime | None = None) -> GcReport:
    """Delete objects of uncommitted versions (claims older than grace_s), leftover work files of committed
    versions, shards no manifest references, and (on S3) multipart uploads abandoned longer than grace_s."""
    now = now or datetime.now(timezone.utc)
    prefix = f"datasets/{name}/" if name else "datasets/"
    by_version: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for info in store.list(prefix):
        match = _VERSION_DIR.match(info.key)
        if match:
            by_version[(match["name"], int(match["version"]))].append((info.key, info.size))
    referenced: dict[str, set[str]] = defaultdict(set)
    committed: set[tuple[str, int]] = set()
    for (ds, version), objects in by_version.items():
        if any(key == manifest_key(ds, version) for key, _ in objects):
            committed.add((ds, version))
            manifest = load_manifest(store, ds, version, allow_withdrawn=True)
            referenced[ds].update(manifest.shard_keys)
            referenced[ds].add(manifest.index["key"])
    deleted: list[tuple[str, int]] = []
    in_progress: list[str] = []
    for (ds, version), objects in sorted(by_version.items()):
        if (ds, version) in committed:
            withdrawn = load_withdrawal(store, ds, version)
            keep = {manifest_key(ds, version), f"datasets/{ds}/v{version}/withdrawn.json"}
            if withdrawn is None:
                keep |= referenced[ds]
            else:
                keep |= referenced[ds] - set(withdrawn.purged_shards)
            deleted += [(k, s) for k, s in objects if k not in keep]
            continue
        age = _claim_age(store, ds, version, now)
        if age is not None and age < timedelta(seconds=grace_s):
            in_progress.append(f"{ds}@v{version}")
            continue
        deleted += [(k, s) for k, s in objects if k not in referenced[ds]]
    if not dry_run:
        for key, _ in deleted:
            store.delete(key)
    aborted = _abort_uploads(store, prefix, now - timedelta(seconds=grace_s), dry_run)
    return GcReport(tuple(k for k, _ in deleted), sum(s for _, s in deleted), tuple(in_progress), aborted, dry_run)


def _claim_age(store: ObjectStore, name: str, version: int, now: datetime) -> timedelta | None:
    try:
        claim = json.loads(store.get_bytes(plan_key(name, version)))
        return now - datetime.fromisoformat(claim["claimed_at"])
    except KeyNotFound:
        return None
    except (ValueError, KeyError) as e:
        log.warning("%s: unreadable claim (%s); treated as abandoned", store.describe(plan_key(name, version)), e)
        return None


def _abort_uploads(store: ObjectStore, prefix: str, before: datetime, dry_run: bool) -> int:
    """Multipart uploads a killed writer left open (invisible in listings, still billed)."""
    if not isinstance(store, S3Store):
        return 0
    full = f"{store.prefix}/{prefix}" if store.prefix else prefix
    aborted = 0
    kwargs = {"Bucket": store.bucket, "Prefix": full}
    while True:
        page = store._call("list multipart uploads", prefix.rstrip("/"), store.client.list_multipart_uploads,
                           **kwargs)
        for upload in page.get("Uploads", []):
            if upload["Initiated"] > before:
                continue
            if not dry_run:
                store._call("abort multipart upload", prefix.rstrip("/"), store.client.abort_multipart_upload,
                            Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
        if not page.get("IsTruncated"):
            return aborted
        kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))

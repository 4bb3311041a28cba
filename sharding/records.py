"""What sharding reads from and writes to the catalog: revoked recordings in, committed versions out."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.models import DatasetVersion, Recording, Run
from alliance.store import ObjectStore
from sharding.layout import manifest_key
from sharding.manifest import Manifest, load_manifest
from sharding.versions import RedactionReport, redact, resolve


def revoked_recordings(catalog: Catalog) -> set[str]:
    """Ids of recordings whose partner withdrew consent (catalog recordings.status == 'revoked')."""
    with catalog.session() as session:
        return set(session.scalars(select(Recording.id).where(Recording.status == "revoked")))


def record_version(catalog: Catalog, manifest: Manifest, *, run_id: str, kind: str = "shard",
                   config: dict[str, Any] | None = None) -> bool:
    """Record the run and the committed version; idempotent (a re-run after a crash adds nothing twice).
    Returns True when the version row was new."""
    now = datetime.now(timezone.utc)
    summary = {"dataset": manifest.ref, "samples": manifest.samples, "shards": len(manifest.shards),
               "bytes": manifest.bytes, "hours": manifest.hours}
    with catalog.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            session.add(Run(id=run_id, kind=kind, status="succeeded", config=config or {}, summary=summary,
                            started_at=now, finished_at=now))
        else:
            run.status, run.summary, run.finished_at = "succeeded", summary, now
        session.flush()
        existing = session.scalar(select(DatasetVersion).where(DatasetVersion.name == manifest.name,
                                                               DatasetVersion.version == manifest.version))
        if existing is not None:
            return False
        session.add(DatasetVersion(name=manifest.name, version=manifest.version,
                                   manifest_key=manifest_key(manifest.name, manifest.version),
                                   parent_version=manifest.parent, samples=manifest.samples, bytes=manifest.bytes,
                                   hours=manifest.hours, run_id=run_id, created_at=now))
    return True


def recorded_versions(catalog: Catalog, name: str | None = None) -> list[DatasetVersion]:
    with catalog.session() as session:
        query = select(DatasetVersion).order_by(DatasetVersion.name, DatasetVersion.version)
        if name:
            query = query.where(DatasetVersion.name == name)
        return list(session.scalars(query))


def redact_revoked(store: ObjectStore, catalog: Catalog, ref: str, *, extra: Iterable[str] = (),
                   purge: bool = False) -> RedactionReport:
    """Redact NAME@vN of every recording the catalog marks revoked (plus `extra` ids), record the new version,
    and store the report at reports/redactions/{name}/v{new}.json."""
    name, version = resolve(store, ref)
    report = redact(store, name, version, revoked_recordings(catalog) | set(extra), purge=purge)
    if report.version is not None:
        manifest = load_manifest(store, name, report.version)
        record_version(catalog, manifest, run_id=f"redact-{name}-v{report.version}-{manifest.plan_sha256[:12]}",
                       kind="redact", config={"parent": version, "revoked": list(report.revoked_recordings)})
        store.put_bytes(f"reports/redactions/{name}/v{report.version}.json",
                        json.dumps(asdict(report), sort_keys=True, indent=1).encode())
    return report

"""What sharding reads from and writes to the catalog: revoked and expired recordings in, committed versions out."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Any, Iterable

from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.errors import KeyNotFound
from alliance.models import AuditEvent, DatasetVersion, DeliveryDetail, Recording
from alliance.runs import SUCCEEDED, write_run
from alliance.store import ObjectStore
from sharding.layout import manifest_key
from sharding.manifest import Manifest, load_manifest
from sharding.redact import RedactionReport, redact
from sharding.versions import resolve

log = logging.getLogger(__name__)
CREDIT = "recording.credit"  # partners.report.CREDIT: a partner credited with bytes another partner stored first


def revoked_recordings(catalog: Catalog) -> set[str]:
    """Ids of recordings whose partner withdrew consent (catalog recordings.status == 'revoked')."""
    with catalog.session() as session:
        return set(session.scalars(select(Recording.id).where(Recording.status == "revoked")))


@dataclass(frozen=True)
class RecordingConsent:
    """A catalog recording as consent sees it: its partner, status, length, and the day its consent ends."""

    recording: str
    partner: str
    status: str  # accepted, revoked
    seconds: float | None  # measured at delivery; None for folder ingests
    expires: date | None  # from its delivery's manifest; None without a contract
    revoke_reason: str | None


def catalog_consent(catalog: Catalog, store: ObjectStore) -> list[RecordingConsent]:
    """Every catalog recording with its consent's end, read from its delivery's manifest (one read per delivery)."""
    from sharding.consent import expires

    with catalog.session() as session:
        rows = session.execute(select(Recording.id, Recording.partner_id, Recording.status, Recording.duration_s,
                                      Recording.revoke_reason, DeliveryDetail.manifest_key)
                               .outerjoin(DeliveryDetail, DeliveryDetail.delivery_id == Recording.delivery_id)
                               .order_by(Recording.partner_id, Recording.id)).all()
    ends: dict[str, date | None] = {}
    found = []
    for recording, partner, status, seconds, reason, key in rows:
        if key and key not in ends:
            try:
                ends[key] = expires(json.loads(store.get_bytes(key)).get("consent"))
            except (KeyNotFound, ValueError) as e:
                log.warning("%s: unreadable (%s); its recordings' consent end is unknown", store.describe(key), e)
                ends[key] = None
        found.append(RecordingConsent(recording, partner, status, seconds, ends.get(key) if key else None, reason))
    return found


def consent_hours(catalog: Catalog, store: ObjectStore, today: date | None = None) -> dict[str, dict[str, float]]:
    """Per partner: hours and recordings accepted, withdrawn (revoked) and expired (consent ended before today)."""
    from sharding.consent import today_utc

    today = today or today_utc()
    figures: dict[str, dict[str, float]] = defaultdict(lambda: {
        "accepted_hours": 0.0, "accepted_recordings": 0, "withdrawn_hours": 0.0, "withdrawn_recordings": 0,
        "expired_hours": 0.0, "expired_recordings": 0})
    for entry in catalog_consent(catalog, store):
        state = ("withdrawn" if entry.status == "revoked" else
                 "expired" if entry.expires is not None and entry.expires < today else "accepted")
        figures[entry.partner][f"{state}_hours"] += (entry.seconds or 0.0) / 3600
        figures[entry.partner][f"{state}_recordings"] += 1
    return dict(sorted(figures.items()))


def withdraw_partner(catalog: Catalog, partner: str, reason: str) -> list[str]:
    """Mark every recording of `partner` revoked with `reason` (the partner leaves and takes its data): those it
    delivered, and those it is credited with after another partner stored the same bytes first. Idempotent: the
    ids newly revoked are returned; `alliance consent sweep` then redacts them out of the dataset versions."""
    now = datetime.now(timezone.utc)
    newly: list[str] = []
    with catalog.session() as session:
        for row in session.scalars(select(Recording).where(Recording.partner_id == partner,
                                                           Recording.status != "revoked")).all():
            row.status, row.revoked_at, row.revoke_reason = "revoked", now, reason
            newly.append(row.id)
        for credit in session.scalars(select(AuditEvent).where(AuditEvent.partner_id == partner,
                                                               AuditEvent.action == CREDIT)).all():
            detail = credit.detail or {}
            if detail.get("credit") != "deduplicated" or detail.get("revoked_at"):
                continue
            credit.detail = {**detail, "revoked_at": now.isoformat(), "revoke_reason": reason}
            row = session.get(Recording, credit.target)
            if row is not None and row.status != "revoked":
                # worded neutrally, as the delivery service does: the first deliverer learns nothing of this one
                row.status, row.revoked_at = "revoked", now
                row.revoke_reason = "consent withdrawn by a partner who delivered identical content"
                newly.append(row.id)
    return sorted(newly)


def record_version(catalog: Catalog, manifest: Manifest, *, run_id: str, kind: str = "shard",
                   config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> bool:
    """Record the run and the committed version; idempotent (a re-run after a crash adds nothing twice).
    `extra` joins the run's summary (e.g. the clips left out, by reason). Returns True when the version row was new."""
    now = datetime.now(timezone.utc)
    summary = {"dataset": manifest.ref, "samples": manifest.samples, "shards": len(manifest.shards),
               "bytes": manifest.bytes, "hours": manifest.hours, **(extra or {})}
    with catalog.session() as session:
        write_run(session, run_id, kind, SUCCEEDED, config=config, summary=summary)  # with the version, or neither
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

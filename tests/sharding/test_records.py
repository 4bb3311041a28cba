"""Catalog side of sharding on SQLite and the real PostgreSQL 15: revocations in, versions recorded once."""

from __future__ import annotations

from alliance.models import Delivery, Partner, Recording
from sharding.manifest import Manifest, ShardEntry
from sharding.records import record_version, recorded_versions, revoked_recordings


def manifest(version: int, parent: int | None = None) -> Manifest:
    return Manifest(name="ego", version=version, parent=parent, shards=(ShardEntry("k", 10, "s" * 64, 2),),
                    samples=2, bytes=10, hours=0.5, partners={}, clusters={}, index={}, source={}, config={},
                    plan_sha256=f"{version:064d}")


def test_revocations_and_idempotent_records(catalog):
    with catalog.session() as session:
        session.add(Partner(id="glassco", display_name="GlassCo"))
        session.flush()  # no ORM relationships: flush parents before children
        session.add(Delivery(id="d1", partner_id="glassco", contract_version="1"))
        session.flush()
        session.add_all([Recording(id=f"r{i}", partner_id="glassco", delivery_id="d1", key=f"landing/{i}", bytes=1,
                                   media_type="video/mp4", status="revoked" if i % 2 else "accepted")
                         for i in range(4)])
    assert revoked_recordings(catalog) == {"r1", "r3"}
    assert record_version(catalog, manifest(1), run_id="shard-ego-v1") is True
    assert record_version(catalog, manifest(1), run_id="shard-ego-v1") is False, "a re-run records nothing twice"
    assert record_version(catalog, manifest(2, parent=1), run_id="redact-ego-v2", kind="redact") is True
    rows = recorded_versions(catalog, "ego")
    assert [(r.version, r.parent_version, r.samples, r.run_id) for r in rows] == [
        (1, None, 2, "shard-ego-v1"), (2, 1, 2, "redact-ego-v2")]

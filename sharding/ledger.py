"""The contribution ledger: curated, withdrawn and expired hours per partner in a version, and the runs that used it."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date
from typing import Collection

import pyarrow as pa
import pyarrow.parquet as pq

from alliance.store import ObjectStore
from sharding.manifest import Manifest, load_manifest
from sharding.redact import training_runs
from sharding.versions import read_index


@dataclass(frozen=True)
class PartnerCredit:
    """What one partner contributed to a version."""

    partner: str
    clips: int
    hours: float
    share_of_hours: float
    recordings: int
    deliveries: int
    # hours of this partner's samples whose consent was withdrawn (revoked) or expired: the ones this version still
    # holds plus the ones redactions removed on the way to it (from its first, unredacted ancestor)
    withdrawn_hours: float = 0.0
    expired_hours: float = 0.0


@dataclass(frozen=True)
class RunUse:
    """A training run that streamed some version of the dataset."""

    run: str
    dataset: str
    version: int
    steps: int
    checkpoints: int
    started_at: str
    finished_at: str
    used_this_version: bool


@dataclass(frozen=True)
class Ledger:
    """Per version: partner credits, and the training runs that consumed any version of the dataset."""

    name: str
    version: int
    clips: int
    hours: float
    partners: tuple[PartnerCredit, ...]
    runs: tuple[RunUse, ...]
    outside_consent_hours: float = 0.0  # withdrawn or expired hours still in this version: `alliance consent sweep`

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


def ledger(store: ObjectStore, name: str, version: int, *, revoked: Collection[str] = (),
           today: date | None = None) -> Ledger:
    """The ledger of NAME@vN from its index (never from listing shards) and checkpoints/*/run.json; withdrawn
    hours count the `revoked` recording ids (the catalog's) and those its redactions removed."""
    manifest = load_manifest(store, name, version, allow_withdrawn=True)
    rows = read_index(store, name, version).select(["partner", "recording_id", "delivery", "seconds",
                                                    "consent"]).to_pylist()
    withdrawn, expired, still_held = _consent_hours(store, manifest, rows, revoked, today)
    clips: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    recordings: dict[str, set[str]] = defaultdict(set)
    deliveries: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        p = row["partner"]
        clips[p] += 1
        seconds[p] += row["seconds"]
        recordings[p].add(row["recording_id"])
        deliveries[p].add(row["delivery"])
    total = sum(seconds.values())
    # exact figures: partners are credited by them, so they must add up to the version's content (round on display)
    partners = tuple(PartnerCredit(p, clips.get(p, 0), seconds.get(p, 0.0) / 3600,
                                   seconds.get(p, 0.0) / total if total else 0.0, len(recordings.get(p, ())),
                                   len(deliveries.get(p, ())), withdrawn.get(p, 0.0), expired.get(p, 0.0))
                     for p in sorted(set(clips) | set(withdrawn) | set(expired)))
    runs = tuple(RunUse(str(r.get("run")), name, int(r.get("version") or 0), int(r.get("steps") or 0),
                        len(r.get("checkpoints") or ()), str(r.get("started_at") or ""),
                        str(r.get("finished_at") or ""), r.get("version") == version)
                 for r in training_runs(store) if r.get("dataset") == name)
    return Ledger(name, version, manifest.samples, manifest.hours, partners, runs, still_held)


def _consent_hours(store: ObjectStore, manifest: Manifest, rows: list[dict], revoked: Collection[str],
                   today: date | None) -> tuple[dict[str, float], dict[str, float], float]:
    """Withdrawn and expired hours per partner over the version's first unredacted ancestor (so what redactions
    removed still counts), and how many such hours the version itself still holds."""
    from sharding.consent import held_outside_consent

    removed: set[str] = set()
    root, root_rows = manifest, rows
    while root.source.get("redaction_of") is not None:
        removed |= set((root.redaction or {}).get("revoked_recordings", ()))
        root = load_manifest(store, root.name, int(root.source["redaction_of"]), allow_withdrawn=True)
        root_rows = None
    if root_rows is None:
        root_rows = read_index(store, root.name, root.version).select(
            ["partner", "recording_id", "delivery", "seconds", "consent"]).to_pylist()
    withdrawn: dict[str, float] = defaultdict(float)
    expired: dict[str, float] = defaultdict(float)
    for held in held_outside_consent(root_rows, None, today=today, revoked=set(revoked)):
        (withdrawn if held.reason == "consent_revoked" else expired)[held.partner] += held.seconds / 3600
        removed.discard(held.recording)
    for row in root_rows:  # removed by a redaction for a reason no longer visible (e.g. `redact --recording`)
        if row["recording_id"] in removed:
            withdrawn[row["partner"]] += row["seconds"] / 3600
    still_held = sum(h.seconds for h in held_outside_consent(rows, None, today=today, revoked=set(revoked))) / 3600
    return dict(withdrawn), dict(expired), still_held


PARTNER_SCHEMA = pa.schema([("dataset", pa.string()), ("version", pa.int32()), ("partner", pa.string()),
                            ("clips", pa.int64()), ("hours", pa.float64()), ("share_of_hours", pa.float64()),
                            ("recordings", pa.int64()), ("deliveries", pa.int64()),
                            ("withdrawn_hours", pa.float64()), ("expired_hours", pa.float64())])
RUN_SCHEMA = pa.schema([("run", pa.string()), ("dataset", pa.string()), ("version", pa.int32()),
                        ("steps", pa.int64()), ("checkpoints", pa.int64()), ("started_at", pa.string()),
                        ("finished_at", pa.string()), ("used_this_version", pa.bool_())])


def ledger_tables(book: Ledger) -> tuple[pa.Table, pa.Table]:
    partners = pa.Table.from_pylist([{"dataset": book.name, "version": book.version, **asdict(p)}
                                     for p in book.partners], schema=PARTNER_SCHEMA)
    runs = pa.Table.from_pylist([asdict(r) for r in book.runs], schema=RUN_SCHEMA)
    return partners, runs


def write_ledger(store: ObjectStore, book: Ledger) -> tuple[str, str]:
    """Store the ledger as ledgers/{name}/v{N}/partners.parquet and runs.parquet; returns both keys."""
    keys = []
    for kind, table in zip(("partners", "runs"), ledger_tables(book)):
        sink = io.BytesIO()
        pq.write_table(table, sink)
        key = f"ledgers/{book.name}/v{book.version}/{kind}.parquet"
        store.put_bytes(key, sink.getvalue())
        keys.append(key)
    return keys[0], keys[1]

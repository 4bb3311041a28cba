"""The consent sweep: dataset versions holding expired or withdrawn recordings get redacted successors; idempotent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Iterable

from alliance.catalog import Catalog
from alliance.store import ObjectStore
from sharding.consent import HeldRecording, held_outside_consent, today_utc
from sharding.manifest import load_manifest, load_withdrawal, latest_version
from sharding.records import recorded_versions, redact_revoked, revoked_recordings
from sharding.redact import AffectedRun, RedactionReport, affected_runs, purge_versions, training_runs
from sharding.versions import read_index


@dataclass(frozen=True)
class VersionFinding:
    """A committed version that holds recordings it may no longer hold, and the version that replaces it."""

    name: str
    version: int
    held: tuple[HeldRecording, ...]
    successor: int | None  # the redacted version without them (None: not written, e.g. a dry run)
    withdrawn: bool  # already marked withdrawn (its affected shards purged)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class SweepReport:
    """What one sweep found and did; a second sweep finds the same versions and writes nothing."""

    today: str
    versions: tuple[VersionFinding, ...]  # every committed version still holding such recordings
    redactions: tuple[RedactionReport, ...]  # the versions this sweep wrote
    affected_runs: tuple[AffectedRun, ...]  # training runs that read a version holding them
    purged: tuple[str, ...] = field(default_factory=tuple)  # versions this sweep marked withdrawn
    dry_run: bool = False

    @property
    def recordings(self) -> tuple[HeldRecording, ...]:
        """Each recording once (its figures from the version that holds most of it)."""
        best: dict[str, HeldRecording] = {}
        for finding in self.versions:
            for held in finding.held:
                if held.recording not in best or held.samples > best[held.recording].samples:
                    best[held.recording] = held
        return tuple(sorted(best.values(), key=lambda h: (h.partner, h.recording)))

    @property
    def wrote(self) -> bool:
        return bool(self.redactions or self.purged)


def dataset_names(catalog: Catalog) -> list[str]:
    return sorted({row.name for row in recorded_versions(catalog)})


def sweep(store: ObjectStore, catalog: Catalog, names: Iterable[str] | None = None, *, today: date | None = None,
          purge: bool = False, dry_run: bool = False) -> SweepReport:
    """Find, in every committed version of the datasets (default: all the catalog records), the recordings whose
    consent expired before `today` (the samples' own consent) or was withdrawn (catalog: revoked); write a redacted
    successor of each newest version holding them (`datasets redact`'s code, recorded in the catalog); with purge,
    delete their shards from the versions that held them and mark those withdrawn. Older versions already redacted
    into a successor are not redacted again, so a second run writes nothing."""
    today = today or today_utc()
    revoked = revoked_recordings(catalog)
    runs = training_runs(store)
    findings: list[VersionFinding] = []
    redactions: list[RedactionReport] = []
    affected: list[AffectedRun] = []
    purged: list[str] = []
    for name in sorted(set(names) if names is not None else dataset_names(catalog)):
        latest = latest_version(store, name) or 0
        manifests = {v: load_manifest(store, name, v, allow_withdrawn=True) for v in range(1, latest + 1)}
        withdrawn = {v for v in manifests if load_withdrawal(store, name, v) is not None}
        children: dict[int, list[int]] = {}
        for v, manifest in manifests.items():
            parent = manifest.source.get("redaction_of")
            if parent is not None:
                children.setdefault(int(parent), []).append(v)
        held: dict[int, tuple[HeldRecording, ...]] = {}
        for v in manifests:
            rows = read_index(store, name, v).select(["partner", "recording_id", "consent", "seconds"]).to_pylist()
            found = held_outside_consent(rows, None, today=today, revoked=revoked)
            if found:
                held[v] = tuple(found)
        successors: dict[int, int] = {}
        for v in sorted(held):
            if v in children or v in withdrawn:
                continue  # an older version already redacted (its newest successor is swept), or withdrawn
            if dry_run:
                continue
            report = redact_revoked(store, catalog, f"{name}@v{v}", extra=[h.recording for h in held[v]])
            if report.version is not None:
                successors[v] = report.version
                if report.version > latest:  # new, not an earlier sweep's version found again
                    redactions.append(report)
        for v in sorted(held):
            successor = _newest_descendant(v, children, successors)
            findings.append(VersionFinding(name, v, held[v], successor, v in withdrawn))
            if purge and not dry_run and successor is not None and v not in withdrawn:
                purge_versions(store, name, [v], {h.recording for h in held[v]}, successor)
                purged.append(f"{name}@v{v}")
        affected += affected_runs(runs, name, held)
    return SweepReport(today.isoformat(), tuple(findings), tuple(redactions), tuple(affected), tuple(purged),
                       dry_run)


def _newest_descendant(version: int, children: dict[int, list[int]], successors: dict[int, int]) -> int | None:
    """The version that replaces `version`: its redaction made now, else the newest end of its redaction chain."""
    if version in successors:
        return successors[version]
    if version not in children:
        return None
    newest = max(children[version])
    return _newest_descendant(newest, children, successors) or newest

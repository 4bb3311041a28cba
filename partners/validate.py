"""Validation of a delivery: integrity, probing and sensor facts, the GX suite, then catalog rows, quarantine and report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.models import AuditEvent, Delivery, DeliveryDetail, DeliveryFile, Recording, utcnow
from alliance.store import CHUNK, ObjectStore
from alliance.tables import Rejection
from partners.contract import (CONTRACT_VERSION, ContractBounds, DeliveryManifest, ManifestFile, contract_problems,
                               file_key, parse_manifest, quarantine_prefix, report_prefix)
from partners.db import writing
from partners.report import (CREDIT, CheckReport, DeliveryReport, FileReport, Problem, fix_for, privacy_treatment,
                             render_html)
from partners.sensors import sensor_facts
from partners.suite import SUITE_VERSION, run_suite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalCopy:
    """A delivered file as the validator sees it: a local path with its measured size and hash."""

    path: Path
    bytes: int
    sha256: str


Locator = Callable[[ManifestFile], ContextManager[LocalCopy | None]]


@dataclass(frozen=True)
class Assessment:
    """What the checks found, before anything is written anywhere."""

    files: list[FileReport]
    delivery_problems: list[Rejection]
    checks: list[CheckReport]


def _hash_stream(read: Callable[[int], bytes], sink=None) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    while chunk := read(CHUNK):
        digest.update(chunk)
        total += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return total, digest.hexdigest()


def hash_file(path: str | Path) -> tuple[int, str]:
    """(bytes, sha256) of a local file, streamed."""
    with open(path, "rb") as f:
        return _hash_stream(f.read)


def store_locator(store: ObjectStore, partner: str, delivery: str) -> Locator:
    """Files from the store's landing area, streamed to a temporary file while hashed."""
    @contextmanager
    def locate(file: ManifestFile) -> Iterator[LocalCopy | None]:
        key = file_key(partner, delivery, file.path)
        if not store.exists(key):  # a re-validation finds refused files where the first one put them
            key = f"{quarantine_prefix(partner, delivery)}/files/{file.path}"
            if not store.exists(key):
                yield None
                return
        suffix = Path(file.path).suffix[:8]
        fd, tmp = tempfile.mkstemp(prefix="alliance-validate-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as sink, store.open_read(key) as source:
                size, sha = _hash_stream(source.read, sink)
            yield LocalCopy(Path(tmp), size, sha)
        finally:
            os.unlink(tmp)
    return locate


def folder_locator(folder: str | Path, hashes: dict[str, tuple[int, str]] | None = None) -> Locator:
    """Files in a local folder (for `alliance deliver --check`); hashes already known may be passed in."""
    root = Path(folder).resolve()

    @contextmanager
    def locate(file: ManifestFile) -> Iterator[LocalCopy | None]:
        from partners import localfs
        from partners.errors import ContractError

        try:  # no link followed, anywhere on the way: a file outside the folder is never read
            os.close(localfs.open_fd(root, file.path))
        except (OSError, ContractError):
            yield None
            return
        path = root / file.path
        size, sha = (hashes or {}).get(file.path) or hash_file(path)
        yield LocalCopy(path, size, sha)
    return locate


def _probe_facts(copy: LocalCopy, declared_duration: float | None, bounds: ContractBounds,
                 timeout_s: float) -> dict:
    from ingest.errors import DecodeError
    from ingest.probe import probe

    try:
        result = probe(copy.path, timeout_s=timeout_s, max_pixels=bounds.max_side * bounds.max_side)
    except DecodeError as e:
        return {"probe_reason": e.reason, "probe_detail": getattr(e, "detail", str(e))}
    excess = None
    if declared_duration is not None:
        excess = abs(result.duration_s - declared_duration) - (bounds.duration_tolerance_s + 0.05 * declared_duration)
        excess = max(0.0, excess)
    return {"probe_reason": None, "container": result.container_format, "codec": result.codec,
            "width": result.width, "height": result.height, "fps": round(result.fps_avg, 3),
            "duration_s": round(result.duration_s, 3), "frames": result.frames, "has_audio": result.has_audio,
            "duration_excess_s": None if excess is None else round(excess, 3)}


def _detail(file: ManifestFile, reason: str, facts: dict, observed, copy: LocalCopy | None) -> str:
    """What was found, in a sentence naming the file."""
    if reason == "file_missing":
        return f"{file.path}: listed in the manifest but never uploaded"
    if reason == "size_mismatch":
        return f"{file.path}: {copy.bytes if copy else '?'} bytes arrived, the manifest declares {file.bytes}"
    if reason == "sha256_mismatch":
        return f"{file.path}: sha256 {copy.sha256 if copy else '?'}, the manifest declares {file.sha256}"
    if facts.get("probe_detail") and reason == facts.get("probe_reason"):
        return f"{file.path}: {facts['probe_detail']}"
    if facts.get("read_detail") and reason == facts.get("read_reason"):
        return facts["read_detail"]
    if reason == "timestamps_not_monotonic":
        return f"{file.path}: the timestamp does not increase at data row {facts.get('first_bad_row')}"
    if reason == "rate_mismatch":
        return (f"{file.path}: samples arrive at {facts.get('rate_hz') or 0:.4g} Hz, the manifest declares "
                f"{facts.get('declared_rate_hz')} Hz")
    if reason == "nan_run":
        return f"{file.path}: {observed:.3g} s of consecutive missing samples"
    if reason == "duration_mismatch":
        return f"{file.path}: measured {facts.get('duration_s')} s, more than the tolerance off the declared length"
    if reason in ("resolution_out_of_bounds", "fps_out_of_bounds", "duration_out_of_bounds"):
        return f"{file.path}: {reason.replace('_', ' ')}: {observed}"
    return f"{file.path}: {reason.replace('_', ' ')} (observed {observed})"


def assess(manifest: DeliveryManifest, locate: Locator, bounds: ContractBounds = ContractBounds(),
           probe_timeout_s: float = 10.0, today: date | None = None) -> Assessment:
    """Measure every file of the manifest, run the GX suite, and give each file its verdict."""
    files = list(manifest.files())
    delivery_problems = contract_problems(manifest, today)
    duplicates = {p.key for p in delivery_problems if p.reason == "duplicate_entry"}
    declared = {r.path: r for r in manifest.recordings}
    sensors = {s.path: s for r in manifest.recordings for s in r.sensors}
    facts: dict[str, dict] = {}
    copies: dict[str, LocalCopy | None] = {}
    rows: dict[str, list[dict]] = {"recordings": [], "sensors": []}
    for file in files:
        with locate(file) as copy:
            copies[file.path] = copy
            row: dict = {"path": file.path, "present": copy is not None}
            if copy is not None:
                row["size_ok"] = copy.bytes == file.bytes
                row["sha256_ok"] = copy.sha256 == file.sha256
                intact = row["size_ok"] and row["sha256_ok"]
                if file.kind == "recording" and intact:
                    row.update(_probe_facts(copy, declared[file.path].duration_s, bounds, probe_timeout_s))
                elif intact:
                    measured = asdict(sensor_facts(copy.path, sensors[file.path]))
                    row.update({k: measured[k] for k in ("read_reason", "read_detail", "rows", "monotonic",
                                                         "first_bad_row", "rate_hz", "rate_ratio", "max_nan_run_s")})
                    row["declared_rate_hz"] = sensors[file.path].rate_hz
            facts[file.path] = row
            rows["recordings" if file.kind == "recording" else "sensors"].append(
                {k: v for k, v in row.items() if not k.endswith("_detail")})
    suite = run_suite(rows, bounds)

    problems: dict[str, list[Problem]] = {f.path: [] for f in files}
    by_path = {f.path: f for f in files}
    for finding in suite.findings:
        file = by_path[finding.path]
        problems[file.path].append(Problem(reason=finding.reason, fix=fix_for(finding.reason), detail=_detail(
            file, finding.reason, facts[file.path], finding.observed, copies[file.path])))
    for path in duplicates:
        problems[path].append(Problem(reason="duplicate_entry", fix=fix_for("duplicate_entry"),
                                      detail=next(p.detail for p in delivery_problems if p.key == path)))
    for file in files:  # a recording stands or falls with its sensor streams
        if file.kind == "sensor" and problems[file.path]:
            problems[file.recording].append(Problem(
                reason="sensor_rejected", fix=fix_for("sensor_rejected"),
                detail=f"{file.recording}: its sensor file {file.path} was refused "
                       f"({', '.join(p.reason for p in problems[file.path])})"))
    whole = [p for p in delivery_problems if p.reason != "duplicate_entry"]
    reports = []
    for file in files:
        rejected = bool(problems[file.path] or whole or problems[file.recording])
        shown = {k: v for k, v in facts[file.path].items() if k not in ("path",) and not k.endswith("_detail")}
        reports.append(FileReport(path=file.path, kind=file.kind, recording=file.recording, bytes=file.bytes,
                                  sha256=file.sha256, verdict="rejected" if rejected else "accepted", facts=shown,
                                  problems=problems[file.path]))
    checks = [CheckReport(check=c, success=ok, failing=n, status="pass" if ok else ("fail" if n else "not measured"))
              for c, ok, n in suite.checks]
    return Assessment(reports, whole, checks)


# --------------------------------------------------------------------------- the service's validation


def _credit(session, manifest: DeliveryManifest, delivery_id: str, report: FileReport, landing: str,
            existing: Recording | None) -> None:
    """Write the ledger line that credits the partner with this recording (once): `new` when the catalog row is
    theirs, `deduplicated` when identical bytes were stored before (from any partner: the partner is not told)."""
    seen = session.scalar(select(AuditEvent.id).where(AuditEvent.partner_id == manifest.partner,
                                                      AuditEvent.action == CREDIT, AuditEvent.target == report.sha256))
    if seen is not None:
        return
    detail = {"delivery_id": delivery_id, "key": landing, "credit": "new" if existing is None else "deduplicated"}
    if existing is not None:
        detail.update({"stored_as": existing.key, "first_partner": existing.partner_id,
                       "first_delivery": existing.delivery_id})
    session.add(AuditEvent(partner_id=manifest.partner, token_id=None, action=CREDIT, target=report.sha256,
                           status=200, detail=detail))


def _register(session, manifest: DeliveryManifest, delivery_id: str, report: FileReport, duration: float | None,
              landing: str) -> Problem | None:
    """Add the catalog row of an accepted recording; a problem if the partner itself delivered these bytes before.

    Bytes another partner delivered first are accepted for this one too and stored once: the ledger says how it
    is credited, and no answer tells one partner anything about another's data."""
    existing = session.get(Recording, report.sha256)
    if existing is None:
        recording = next(r for r in manifest.recordings if r.path == report.path)
        session.add(Recording(id=report.sha256, partner_id=manifest.partner, delivery_id=delivery_id, key=landing,
                              bytes=report.bytes, media_type=recording.media_type, duration_s=duration,
                              status="accepted"))
        _credit(session, manifest, delivery_id, report, landing, None)
        return None
    if existing.partner_id != manifest.partner:
        _credit(session, manifest, delivery_id, report, landing, existing)
        return None
    if existing.status == "revoked":
        reason = "recording_revoked"
        detail = f"{report.path}: recording {report.sha256[:12]}... was revoked on {existing.revoked_at}"
    elif existing.delivery_id == delivery_id:
        return None  # validating the same delivery again: the row is already there
    else:
        reason = "already_delivered"
        detail = f"{report.path}: recording {report.sha256[:12]}... already came with an earlier delivery"
    return Problem(reason=reason, detail=detail, fix=fix_for(reason))


def _move_to_quarantine(store: ObjectStore, partner: str, delivery: str, path: str) -> None:
    source = file_key(partner, delivery, path)
    if not store.exists(source):
        return
    with store.open_read(source) as body:
        store.put_stream(f"{quarantine_prefix(partner, delivery)}/files/{path}", body)
    store.delete(source)


def validate_delivery(store: ObjectStore, catalog: Catalog, delivery_id: str, *,
                      bounds: ContractBounds = ContractBounds(), probe_timeout_s: float = 10.0,
                      force: bool = False) -> DeliveryReport:
    """Validate an uploaded delivery end to end; writes catalog rows, quarantine and the report.

    Re-runnable: a delivery already validated returns its stored report unless `force`, and a forced run reaches
    the same verdicts (refused files are read back from quarantine, accepted rows are not added twice)."""
    with writing(catalog) as session:
        detail = session.get(DeliveryDetail, delivery_id)
        partner, name, manifest_key = detail.partner_id, detail.name, detail.manifest_key
        delivery = session.get(Delivery, delivery_id)
        done = delivery.status in ("accepted", "partial", "rejected") and delivery.report_key
        report_key = delivery.report_key
    if done and not force and store.exists(report_key):
        return DeliveryReport.model_validate_json(store.get_bytes(report_key))
    manifest = parse_manifest(store.get_bytes(manifest_key))
    assessment = assess(manifest, store_locator(store, partner, name), bounds, probe_timeout_s)
    files = assessment.files
    durations = {f.path: f.facts.get("duration_s") for f in files}

    with writing(catalog) as session:
        for report in files:
            if report.kind == "recording" and report.verdict == "accepted":
                problem = _register(session, manifest, delivery_id, report, durations[report.path],
                                    file_key(partner, name, report.path))
                if problem is not None:
                    report.problems.append(problem)
                    report.verdict = "rejected"
                else:
                    report.recording_id = report.sha256
        # a sensor file follows its recording's verdict
        verdicts = {f.path: f.verdict for f in files if f.kind == "recording"}
        for report in files:
            if report.kind == "sensor" and verdicts[report.recording] == "rejected":
                report.verdict = "rejected"

    for report in files:
        if report.verdict == "rejected":
            _move_to_quarantine(store, partner, name, report.path)

    recordings = [f for f in files if f.kind == "recording"]
    accepted = sum(1 for f in recordings if f.verdict == "accepted")
    status = "accepted" if accepted == len(recordings) else ("rejected" if accepted == 0 else "partial")
    reasons: dict[str, int] = {}
    rejections: list[Rejection] = []
    for problem in assessment.delivery_problems:
        reasons[problem.reason] = reasons.get(problem.reason, 0) + 1
        rejections.append(problem)
    for report in files:
        for problem in report.problems:
            reasons[problem.reason] = reasons.get(problem.reason, 0) + 1
            rejections.append(Rejection(report.path, "contract", problem.reason, f"{problem.detail}; {problem.fix}"))

    prefix = report_prefix(partner, name)
    keys = {"json": f"{prefix}/report.json", "html": f"{prefix}/report.html",
            "rejections": f"{quarantine_prefix(partner, name)}/rejections.jsonl"}
    report = DeliveryReport(
        partner=partner, delivery=name, delivery_id=delivery_id, contract_version=CONTRACT_VERSION,
        suite_version=SUITE_VERSION, status=status, validated_at=datetime.now(timezone.utc),
        recordings_accepted=accepted, recordings_rejected=len(recordings) - accepted, reasons=reasons,
        delivery_problems=[Problem(reason=p.reason, detail=p.detail, fix=fix_for(p.reason))
                           for p in assessment.delivery_problems],
        files=files, checks=assessment.checks, report_keys=keys,
        privacy=privacy_treatment(manifest.consent.faces_allowed, manifest.consent.audio_allowed))
    store.put_bytes(keys["rejections"], "".join(json.dumps(r.to_dict()) + "\n" for r in rejections).encode())
    store.put_bytes(keys["html"], render_html(report).encode())
    store.put_bytes(keys["json"], report.model_dump_json(indent=2).encode())

    with writing(catalog) as session:
        delivery = session.get(Delivery, delivery_id)
        delivery.status = status
        delivery.report_key = keys["json"]
        delivery.completed_at = utcnow()
        session.get(DeliveryDetail, delivery_id).summary = {
            "recordings": len(recordings), "accepted": accepted, "rejected": len(recordings) - accepted,
            "reasons": reasons}
        verdict = {f.path: f for f in files}
        for row in session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id)):
            found = verdict.get(row.path)  # the service writes the manifest and the rows together; never trust it
            row.state = found.verdict if found else "rejected"
            row.reason = (found.problems[0].reason if found.problems else None) if found else "not_in_manifest"
            row.updated_at = utcnow()
    log.info("delivery %s/%s: %s, %d of %d recordings accepted", partner, name, status, accepted, len(recordings))
    return report

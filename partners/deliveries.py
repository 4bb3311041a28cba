"""Deliveries in the catalog: their ids, the caller's own rows, the status a partner sees, and opening one from its
manifest (plain functions over a session; the routes in partners.routes wrap them)."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from alliance.errors import CatalogError
from alliance.models import Delivery, DeliveryDetail, DeliveryFile, utcnow
from partners.accounts import Principal
from partners.api import DeliveryStatus, FileState
from partners.contract import contract_problems, delivery_key, file_key, manifest_key, parse_manifest
from partners.db import writing
from partners.deps import ServiceState
from partners.errors import Conflict, ContractError, NotFound, TooLarge

FINAL = ("accepted", "partial", "rejected")


def delivery_id_for(partner: str, name: str) -> str:
    """Content-derived: the same partner re-sending the same delivery name gets the same id."""
    return "d" + hashlib.sha256(f"{partner}\n{name}".encode()).hexdigest()[:31]


def staging(partner: str, name: str, index: int) -> str:
    """Where a file's parts wait on a file:// store until the file is completed."""
    return f"uploads/{partner}/{delivery_key(name)}/{index:05d}"


def discard_pending(state: ServiceState, detail: DeliveryDetail, rows) -> None:
    """Drop what was sent of the files still pending (staged parts, multipart uploads): they can no longer finish."""
    for row in rows:
        if row.state == "pending":
            state.uploads.discard(file_key(detail.partner_id, detail.name, row.path), row.upload_id,
                                  staging(detail.partner_id, detail.name, row.idx))
            row.upload_id = None


def own_delivery(session, who: Principal, delivery_id: str) -> tuple[Delivery, DeliveryDetail]:
    delivery = session.get(Delivery, delivery_id)
    detail = session.get(DeliveryDetail, delivery_id)
    if delivery is None or detail is None or delivery.partner_id != who.partner:
        raise NotFound("delivery_not_found", f"no delivery {delivery_id} for partner {who.partner}")
    return delivery, detail


def own_file(session, delivery_id: str, index: int) -> DeliveryFile:
    row = session.scalar(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                    DeliveryFile.idx == index))
    if row is None:
        raise NotFound("file_not_found", f"delivery {delivery_id} has no file {index}")
    return row


def file_state(row: DeliveryFile) -> FileState:
    return FileState(index=row.idx, path=row.path, kind=row.kind, bytes=row.bytes, sha256=row.sha256, state=row.state,
                     reason=row.reason)


def delivery_status(session, delivery: Delivery, detail: DeliveryDetail) -> DeliveryStatus:
    files = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id)
                            .order_by(DeliveryFile.idx)).all()
    done = delivery.status in FINAL
    return DeliveryStatus(
        id=delivery.id, partner=delivery.partner_id, delivery=detail.name, status=delivery.status,
        contract_version=delivery.contract_version, created_at=delivery.created_at,
        completed_at=delivery.completed_at, summary=detail.summary or {}, files=[file_state(f) for f in files],
        report_url=f"/deliveries/{delivery.id}/report.json" if done else None,
        report_html_url=f"/deliveries/{delivery.id}/report" if done else None,
        report_key=delivery.report_key)


def open_from_manifest(state: ServiceState, who: Principal, raw: bytes) -> tuple[int, DeliveryStatus]:
    """201 and a new delivery; 200 and the same one for the same manifest (an expired one reopens); 409 for another
    manifest under a name already taken. Of racing openers the first insert wins, and only it writes the manifest."""
    config = state.config
    manifest = parse_manifest(raw, config.manifest)
    if manifest.partner != who.partner:
        raise ContractError("partner_mismatch", f"the manifest names partner {manifest.partner!r} but this token "
                            f"belongs to {who.partner!r}: set \"partner\": \"{who.partner}\"")
    problems = contract_problems(manifest)
    if problems:
        raise ContractError(problems[0].reason, problems[0].detail, [p.to_dict() for p in problems])
    files = list(manifest.files())
    if len(files) > config.max_files:
        raise TooLarge("too_many_files", f"{len(files)} files; at most {config.max_files} per delivery: split it")
    for file in files:
        if file.bytes > config.max_file_bytes:
            raise TooLarge("file_too_large", f"{file.path}: {file.bytes} bytes, above the {config.max_file_bytes} "
                           "byte limit per file: split the recording")
    total = sum(f.bytes for f in files)
    if total > config.max_delivery_bytes:
        raise TooLarge("delivery_too_large", f"{total} bytes in all, above the {config.max_delivery_bytes} byte "
                       "limit per delivery: split it into several deliveries")
    canonical = manifest.canonical_json()
    digest = hashlib.sha256(canonical).hexdigest()
    delivery_id = delivery_id_for(who.partner, manifest.delivery)

    def answer_existing(session, existing: Delivery) -> tuple[int, DeliveryStatus]:
        if existing.manifest_sha256 != digest:
            raise Conflict("delivery_conflict", f"delivery {manifest.delivery!r} was already opened with "
                           "another manifest: give this one a new \"delivery\" name (or re-send the same "
                           "manifest to resume it)")
        if existing.status == "expired":  # the partner came back: reopen it, the parts are to be sent again
            existing.status = "open"
            detail = session.get(DeliveryDetail, delivery_id)
            detail.summary = {k: v for k, v in (detail.summary or {}).items() if k != "expired"}
            for row in session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id)):
                row.updated_at = utcnow()
            session.flush()
        return 200, delivery_status(session, existing, session.get(DeliveryDetail, delivery_id))

    with writing(state.catalog) as session:
        existing = session.get(Delivery, delivery_id)
        if existing is not None:
            return answer_existing(session, existing)
    key = manifest_key(who.partner, manifest.delivery)
    try:
        with writing(state.catalog) as session:
            delivery = Delivery(id=delivery_id, partner_id=who.partner, status="open",
                                contract_version=manifest.contract_version, manifest_sha256=digest)
            detail = DeliveryDetail(delivery_id=delivery_id, partner_id=who.partner, name=manifest.delivery,
                                    manifest_key=key, files=len(files), bytes_total=total, summary={})
            session.add(delivery)
            session.flush()  # claims the name: a concurrent opener waits on this row, then fails to insert it
            session.add(detail)
            for index, file in enumerate(files):
                session.add(DeliveryFile(delivery_id=delivery_id, idx=index, path=file.path, kind=file.kind,
                                         bytes=file.bytes, sha256=file.sha256, state="pending"))
            session.flush()
            # only the winner writes the manifest, before its rows commit: store and catalog always agree
            state.store.put_bytes(key, canonical)
            return 201, delivery_status(session, delivery, detail)
    except (CatalogError, IntegrityError) as e:
        if not isinstance(e, IntegrityError) and not isinstance(e.__cause__, IntegrityError):
            raise
    with writing(state.catalog) as session:  # another request opened this name first: same manifest or a 409
        return answer_existing(session, session.get(Delivery, delivery_id))

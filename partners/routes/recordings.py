"""Routes over a partner's accepted recordings: list and read them (those credited to it after deduplication
included, as its own), and withdraw consent for one."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from alliance.models import AuditEvent, Recording, utcnow
from partners.accounts import Principal
from partners.api import RecordingOut, RevokeIn
from partners.db import writing
from partners.deps import ERRORS, Caller, RecordingId, ServiceState, State, json_body, read_limited
from partners.errors import NotFound, PartnerError
from partners.report import CREDIT

router = APIRouter()


def _recording_out(row: Recording) -> RecordingOut:
    return RecordingOut(id=row.id, delivery_id=row.delivery_id, key=row.key, bytes=row.bytes,
                        media_type=row.media_type, duration_s=row.duration_s, status=row.status,
                        accepted_at=row.accepted_at, revoked_at=row.revoked_at, revoke_reason=row.revoke_reason)


def _credited_out(row: Recording, credit: AuditEvent) -> RecordingOut:
    """A recording stored once under another partner, as the partner credited with it sees it: its own."""
    detail = credit.detail or {}
    return RecordingOut(id=row.id, delivery_id=detail.get("delivery_id", ""), key=detail.get("key", ""),
                        bytes=row.bytes, media_type=row.media_type, duration_s=row.duration_s,
                        status="revoked" if detail.get("revoked_at") else "accepted", accepted_at=credit.at,
                        revoked_at=detail.get("revoked_at"), revoke_reason=detail.get("revoke_reason"))


def _credits(session, who: Principal, recording_id: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.partner_id == who.partner, AuditEvent.action == CREDIT)
    if recording_id is not None:
        query = query.where(AuditEvent.target == recording_id)
    return [e for e in session.scalars(query.order_by(AuditEvent.id)).all()
            if (e.detail or {}).get("credit") == "deduplicated"]


def _own_recording(session, who: Principal, recording_id: str) -> tuple[Recording, AuditEvent | None]:
    row = session.get(Recording, recording_id)
    if row is not None and row.partner_id == who.partner:
        return row, None
    credits = _credits(session, who, recording_id) if row is not None else []
    if not credits:
        raise NotFound("recording_not_found", f"no recording {recording_id} for partner {who.partner}")
    return row, credits[0]


def _out(row: Recording, credit: AuditEvent | None) -> RecordingOut:
    return _recording_out(row) if credit is None else _credited_out(row, credit)


@router.get("/recordings", response_model=list[RecordingOut], responses=ERRORS, name="list_recordings")
def list_recordings(who: Caller, state: State, limit: int = Query(1000, ge=1, le=10_000)):
    with state.catalog.session() as session:
        rows = session.scalars(select(Recording).where(Recording.partner_id == who.partner)
                               .order_by(Recording.accepted_at).limit(limit)).all()
        found = [_recording_out(r) for r in rows]
        for credit in _credits(session, who):
            row = session.get(Recording, credit.target)
            if row is not None:
                found.append(_credited_out(row, credit))
        return sorted(found, key=lambda r: r.accepted_at.replace(tzinfo=None))[:limit]


@router.get("/recordings/{recording_id}", response_model=RecordingOut, responses=ERRORS, name="get_recording")
def get_recording(recording_id: RecordingId, who: Caller, state: State):
    with state.catalog.session() as session:
        return _out(*_own_recording(session, who, recording_id))


def _revoke(state: ServiceState, who: Principal, recording_id: str, reason: str) -> RecordingOut:
    """Revoke once: the first time and reason are kept. A credited partner revokes its credit and the content,
    the content's own reason worded so that it names no one."""
    with writing(state.catalog) as session:
        row, credit = _own_recording(session, who, recording_id)
        if credit is not None:
            if not (credit.detail or {}).get("revoked_at"):
                credit.detail = {**(credit.detail or {}), "revoked_at": utcnow().isoformat(), "revoke_reason": reason}
            if row.status != "revoked":
                row.status, row.revoked_at = "revoked", utcnow()
                row.revoke_reason = "consent withdrawn by a partner who delivered identical content"
        elif row.status != "revoked":
            row.status, row.revoked_at, row.revoke_reason = "revoked", utcnow(), reason
        session.flush()
        return _out(row, credit)


@router.post("/recordings/{recording_id}/revoke", response_model=RecordingOut, responses=ERRORS,
             name="revoke_recording", openapi_extra=json_body("#/components/schemas/RevokeIn"))
async def revoke_recording(request: Request, recording_id: RecordingId, who: Caller, state: State):
    """Consent withdrawn: the recording is marked revoked with the time and reason; datasets honour it."""
    raw = await read_limited(request, state.config.max_json_body, "request")
    try:
        body = RevokeIn.model_validate_json(raw)
    except ValueError as e:
        raise PartnerError("request_invalid", f"expected {{\"reason\": \"...\"}}: {str(e).splitlines()[0]}") from e
    if "\x00" in body.reason:
        raise PartnerError("request_invalid", "the reason may not contain NUL characters")
    return (await run_in_threadpool(_revoke, state, who, recording_id, body.reason)).model_dump(mode="json")

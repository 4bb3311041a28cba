"""The partner's audit trail: which requests leave an event in it, and GET /audit to read one's own."""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from alliance.models import AuditEvent, utcnow
from partners.accounts import Principal
from partners.api import AuditOut
from partners.deps import ERRORS, Caller, State

router = APIRouter()
_SAFE_TARGET = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def audit_event(request: Request, status: int) -> AuditEvent | None:
    """The event a request leaves, or None for those not kept: every partner action and refused token; part PUTs
    carry no token: their refusals are kept (a tampered, expired or re-targeted URL leaves a trace), their
    successes are not (one per part would drown the log); a request the service could not serve (catalog or store
    down) is kept even before a partner is known."""
    principal: Principal | None = getattr(request.state, "principal", None)
    route = request.scope.get("route")
    name = getattr(route, "name", "")
    if route is None and request.url.path.startswith("/uploads/"):
        name, route = "upload_part", "unmatched"  # a mangled part URL is a refused part upload too
    refused_part = name == "upload_part" and status >= 400
    unserved = status >= 500
    if route is None or name == "health" or (name == "upload_part" and not refused_part) or (
            principal is None and status != 401 and not refused_part and not unserved):
        return None
    params = request.scope.get("path_params", {})
    target = params.get("delivery_id") or params.get("recording_id")
    return AuditEvent(at=utcnow(), partner_id=principal.partner if principal else None,
                      token_id=principal.token_id if principal else None, action=name,
                      target=target if target and _SAFE_TARGET.match(str(target)) else None, status=status,
                      detail={"method": request.method, "file": params.get("index"), "part": params.get("part")})


async def record_request(request: Request, call_next):
    """HTTP middleware: queue the request's audit event (written by the service's AuditWriter)."""
    response = await call_next(request)
    event = audit_event(request, response.status_code)
    if event is not None:
        request.app.state.service.audit.add(event)
    return response


@router.get("/audit", response_model=list[AuditOut], responses=ERRORS, name="list_audit")
def list_audit(who: Caller, state: State, limit: int = Query(100, ge=1, le=1000)):
    state.audit.flush()
    with state.catalog.session() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.partner_id == who.partner)
                               .order_by(AuditEvent.id.desc()).limit(limit)).all()
        return [AuditOut(at=r.at, action=r.action, target=r.target, status=r.status, token_id=r.token_id)
                for r in rows]

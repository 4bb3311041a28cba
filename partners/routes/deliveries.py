"""Routes over a partner's deliveries: open one with its manifest, list and read them, complete one (validation
runs in the background), and fetch its report."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from alliance.models import Delivery, DeliveryDetail, DeliveryFile
from partners.accounts import Principal
from partners.api import DeliveryStatus
from partners.background import validate
from partners.db import writing
from partners.deliveries import FINAL, delivery_status, discard_pending, open_from_manifest, own_delivery
from partners.deps import ERRORS, Caller, DeliveryId, ServiceState, State, json_body, read_limited
from partners.errors import NotFound

router = APIRouter()


@router.post("/deliveries", response_model=DeliveryStatus, status_code=201, name="open_delivery",
             responses={**ERRORS, 200: {"model": DeliveryStatus, "description": "the same delivery, re-sent"}},
             openapi_extra=json_body("#/components/schemas/DeliveryManifest"))
async def open_delivery(request: Request, who: Caller, state: State):
    """Open a delivery with its manifest; re-sending the same manifest returns the same delivery."""
    raw = await read_limited(request, state.config.manifest.max_bytes, "manifest")
    status, body = await run_in_threadpool(open_from_manifest, state, who, raw)
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


@router.get("/deliveries", response_model=list[DeliveryStatus], responses=ERRORS, name="list_deliveries")
def list_deliveries(who: Caller, state: State,
                    limit: int = Query(100, ge=1, le=1000)) -> list[DeliveryStatus]:
    with state.catalog.session() as session:
        rows = session.scalars(select(Delivery).where(Delivery.partner_id == who.partner)
                               .order_by(Delivery.created_at.desc()).limit(limit)).all()
        return [delivery_status(session, d, session.get(DeliveryDetail, d.id)) for d in rows
                if session.get(DeliveryDetail, d.id) is not None]


@router.get("/deliveries/{delivery_id}", response_model=DeliveryStatus, responses=ERRORS, name="get_delivery")
def get_delivery(delivery_id: DeliveryId, who: Caller, state: State) -> DeliveryStatus:
    with state.catalog.session() as session:
        return delivery_status(session, *own_delivery(session, who, delivery_id))


@router.post("/deliveries/{delivery_id}/complete", response_model=DeliveryStatus, status_code=202,
             responses=ERRORS, name="complete_delivery")
def complete_delivery(delivery_id: DeliveryId, who: Caller, state: State) -> DeliveryStatus:
    """Close the delivery and validate it; files never uploaded are refused as file_missing in the report."""
    with writing(state.catalog) as session:
        delivery, detail = own_delivery(session, who, delivery_id)
        if delivery.status in ("open", "error"):
            discard_pending(state, detail, session.scalars(select(DeliveryFile).where(
                DeliveryFile.delivery_id == delivery_id, DeliveryFile.state == "pending")))
            delivery.status = "validating"
            session.flush()
            state.validator.submit(validate, state, delivery_id)
        return delivery_status(session, delivery, detail)


def _report(state: ServiceState, who: Principal, delivery_id: str, name: str) -> bytes:
    with state.catalog.session() as session:
        delivery, _ = own_delivery(session, who, delivery_id)
        if delivery.status not in FINAL or not delivery.report_key:
            raise NotFound("report_not_ready", f"delivery {delivery_id} is {delivery.status}; the report "
                           "exists once it is validated")
        key = delivery.report_key
    return state.store.get_bytes(key[: -len("report.json")] + name)


@router.get("/deliveries/{delivery_id}/report.json", responses=ERRORS, name="get_report_json")
def get_report_json(delivery_id: DeliveryId, who: Caller, state: State):
    return Response(_report(state, who, delivery_id, "report.json"), media_type="application/json")


@router.get("/deliveries/{delivery_id}/report", response_class=HTMLResponse, responses=ERRORS,
            name="get_report_html")
def get_report_html(delivery_id: DeliveryId, who: Caller, state: State):
    return HTMLResponse(_report(state, who, delivery_id, "report.html"))

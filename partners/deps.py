"""What every route of the delivery service shares: the service state, the caller (token and rate limit), id
patterns, documented errors and bounded request bodies; handed to routes as FastAPI dependencies."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alliance.catalog import Catalog
from alliance.store import ObjectStore
from partners.accounts import Principal, authenticate
from partners.api import ErrorOut
from partners.auditlog import AuditWriter
from partners.config import ServiceConfig
from partners.errors import PartnerError, TooLarge
from partners.ratelimit import RateLimiter
from partners.uploads import Uploads

DELIVERY_ID = r"^d[0-9a-f]{31}$"
RECORDING_ID = r"^[0-9a-f]{64}$"
ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 429)}


@dataclass(frozen=True)
class ServiceState:
    """One running service's shared parts, built once by create_app and kept on app.state.service."""

    config: ServiceConfig
    store: ObjectStore
    catalog: Catalog
    uploads: Uploads
    limiter: RateLimiter
    audit: AuditWriter
    validator: ThreadPoolExecutor  # one thread: deliveries are validated one at a time, in the order completed


async def service(request: Request) -> ServiceState:
    return request.app.state.service


_bearer = HTTPBearer(auto_error=False)


def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
              state: ServiceState = Depends(service)) -> Principal:
    """The partner the request's token acts for, within its request budget (guesses are slowed per address)."""
    client = request.client.host if request.client else "unknown"
    if credentials is None:
        state.limiter.take(f"ip:{client}")
        who = authenticate(state.catalog, "")
    else:
        try:
            who = authenticate(state.catalog, credentials.credentials)
        except PartnerError:
            state.limiter.take(f"ip:{client}")
            raise
    state.limiter.take(f"token:{who.token_id}")
    request.state.principal = who
    return who


# Parameters as the routes declare them
DeliveryId = Annotated[str, Path(pattern=DELIVERY_ID)]
RecordingId = Annotated[str, Path(pattern=RECORDING_ID)]
FileIndex = Annotated[int, Path(ge=0, le=100_000)]
Caller = Annotated[Principal, Depends(principal)]
State = Annotated[ServiceState, Depends(service)]


def json_body(schema_ref: str) -> dict:
    """openapi_extra for a route that reads its JSON body itself (to bound its size before parsing it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": schema_ref}}}}}


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge("body_too_large", f"the {what} is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge("body_too_large", f"the {what} is over the {limit} byte limit")
    return bytes(body)

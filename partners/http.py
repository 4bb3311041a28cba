"""What every answer of the delivery service carries: security headers, a bound on request headers, and each
refusal as an ErrorOut with a stable reason (never a traceback)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from alliance.errors import AllianceError, InvalidKey, KeyNotFound
from partners.api import ErrorOut
from partners.errors import PartnerError, RateLimited

log = logging.getLogger(__name__)

REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
DOCS_CSP = ("default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; style-src 'unsafe-inline' "
            "https://cdn.jsdelivr.net; img-src data: https://fastapi.tiangolo.com; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def security_headers(path: str = "") -> list[tuple[bytes, bytes]]:
    """The headers every answer carries, the HTTP protocol's own refusals included."""
    csp = DOCS_CSP if path in ("/docs", "/redoc", "/docs/oauth2-redirect") else REPORT_CSP
    return [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", csp.encode()),
            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
            (b"cross-origin-resource-policy", b"same-origin")]


class Guard:
    """Pure ASGI: refuses a request with too many headers (431), and puts security headers on every response
    (a strict Content-Security-Policy: reports are self-contained HTML; /docs may load Swagger UI's CDN)."""

    def __init__(self, app, max_headers: int, max_header_bytes: int):
        self.app, self.max_headers, self.max_header_bytes = app, max_headers, max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = security_headers(scope["path"])

        async def send_secured(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((n, v) for n, v in extra if n not in present)]}
            await send(message)

        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if len(scope["headers"]) > self.max_headers or size > self.max_header_bytes:
            body = ErrorOut(error="too_many_headers", detail=f"{len(scope['headers'])} request headers, {size} bytes; "
                            f"at most {self.max_headers} headers and {self.max_header_bytes} bytes: send fewer"
                            ).model_dump_json().encode()
            await send_secured({"type": "http.response.start", "status": 431, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await send_secured({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_secured)


async def _partner_error(_request: Request, e: PartnerError):
    headers = {"Retry-After": str(max(1, round(e.retry_after_s)))} if isinstance(e, RateLimited) else None
    return JSONResponse(ErrorOut(error=e.reason, detail=str(e), problems=e.problems).model_dump(),
                        status_code=e.status_code, headers=headers)


async def _request_invalid(_request: Request, e: RequestValidationError):
    problems = [{"field": ".".join(str(p) for p in err.get("loc", ())), "detail": str(err.get("msg", ""))}
                for err in e.errors()]
    first = problems[0] if problems else {"field": "", "detail": "invalid request"}
    return JSONResponse(ErrorOut(error="request_invalid", detail=f"{first['field']}: {first['detail']}",
                                 problems=problems).model_dump(), status_code=422)


async def _kernel_error(_request: Request, e: AllianceError):
    status, reason = (400, "invalid_key") if isinstance(e, InvalidKey) else (
        (404, "not_found") if isinstance(e, KeyNotFound) else (503, "unavailable"))
    if status == 503:
        log.error("store or catalog failure: %s", e)
    return JSONResponse(ErrorOut(error=reason, detail=str(e)).model_dump(), status_code=status)


def install(app: FastAPI, max_headers: int, max_header_bytes: int) -> None:
    """The guard around the app and the error handlers inside it."""
    app.add_middleware(Guard, max_headers=max_headers, max_header_bytes=max_header_bytes)
    app.add_exception_handler(PartnerError, _partner_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(AllianceError, _kernel_error)

"""The delivery service (FastAPI): per-partner tokens, presigned multipart uploads, validation, reports, revocation."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from alliance.catalog import Catalog
from alliance.errors import AllianceError, CatalogError, InvalidKey, KeyNotFound
from alliance.models import ApiToken, AuditEvent, Delivery, DeliveryDetail, DeliveryFile, Recording, utcnow
from alliance.settings import Settings
from alliance.store import ObjectStore, S3Store, open_store
from partners.accounts import Principal, authenticate
from partners.api import (AuditOut, DeliveryStatus, ErrorOut, FileState, PartUrl, RecordingOut, RevokeIn, UploadPlan,
                          WhoAmI)
from partners.db import writing
from partners.contract import (CONTRACT_VERSION, ContractBounds, DeliveryManifest, ManifestLimits, contract_problems,
                               delivery_key, file_key, manifest_key, parse_manifest)
from partners.errors import Conflict, ContractError, Forbidden, NotFound, PartnerError, RateLimited, TooLarge
from partners.uploads import PartSpec, Uploads, part_layout
from partners.report import CREDIT

log = logging.getLogger(__name__)
DELIVERY_ID = r"^d[0-9a-f]{31}$"
RECORDING_ID = r"^[0-9a-f]{64}$"
FINAL = ("accepted", "partial", "rejected")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and knobs of the delivery service; the defaults suit one machine and real S3 (parts >= 5 MiB)."""

    part_size: int = 8 << 20
    max_file_bytes: int = 50 << 30
    max_delivery_bytes: int = 500 << 30
    max_files: int = 10_000
    manifest: ManifestLimits = ManifestLimits()
    max_json_body: int = 64 << 10  # bodies other than the manifest
    rate_per_s: float = 20.0  # per token, sustained
    rate_burst: int = 200
    url_expiry_s: int = 900  # S3 part URLs cannot ask about the token: they are short-lived, re-issued on demand
    probe_timeout_s: float = 10.0
    bounds: ContractBounds = field(default_factory=ContractBounds)
    upload_secret: str = field(default="", repr=False)  # signs file:// part URLs; random per process when empty
    # hostile connections (enforced by partners.server's HTTP protocol; max_headers by the app itself)
    header_timeout_s: float = 10.0  # the request line and headers must arrive within this, from the first byte
    keep_alive_s: int = 5  # an idle connection between requests is closed after this
    body_idle_timeout_s: float = 30.0  # no body byte for this long: the request is cut off (408)
    body_grace_s: float = 10.0  # after this, a body must average at least min_body_rate
    min_body_rate: int = 4096  # bytes per second, over the whole body so far
    max_headers: int = 100
    max_header_bytes: int = 32 << 10
    max_connections: int = 1000  # above this, 503 at once
    open_delivery_ttl_s: float = 7 * 24 * 3600.0  # an open delivery with no activity this long expires
    reap_interval_s: float = 600.0  # how often abandoned deliveries and crash-left staged parts are looked for


class RateLimiter:
    """A token bucket per key (API token id, or client address for requests without a valid token)."""

    def __init__(self, rate_per_s: float, burst: int):
        self.rate, self.burst = rate_per_s, burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self.buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
                raise RateLimited("rate_limited", f"more than {self.rate:g} requests/s (burst {self.burst}) for this "
                                  f"token: retry in {wait:.1f}s", wait)
            self.buckets[key] = (tokens - 1, now)


class AuditWriter:
    """Appends audit events in batches from a background thread, so a request does not wait for a commit.

    Events reach the catalog within `interval_s`; stop() and flush() write whatever is queued."""

    def __init__(self, catalog: Catalog, interval_s: float = 0.2):
        self.catalog, self.interval_s = catalog, interval_s
        self.queue: list[AuditEvent] = []
        self.lock = threading.Lock()
        self.flushing = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, event: AuditEvent) -> None:
        with self.lock:
            self.queue.append(event)

    def flush(self) -> None:
        with self.flushing:
            with self.lock:
                batch, self.queue = self.queue, []
            if not batch:
                return
            try:
                with writing(self.catalog) as session:
                    session.add_all(batch)
            except CatalogError:
                with self.lock:  # the catalog is down: keep the batch, ahead of what came in meanwhile
                    self.queue = [_fresh(event) for event in batch] + self.queue
                raise

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.flush()
            except CatalogError as e:  # the batch stays queued (flush puts it back); say so loudly
                log.error("could not write the queued audit events, will retry: %s", e)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        self.flush()


def _fresh(event: AuditEvent) -> AuditEvent:
    """A transient copy of an event whose failed session may have left it attached or half-flushed."""
    return AuditEvent(at=event.at, partner_id=event.partner_id, token_id=event.token_id, action=event.action,
                      target=event.target, status=event.status, detail=dict(event.detail or {}))


def _warm_up() -> None:
    import great_expectations  # noqa: F401

    import partners.validate  # noqa: F401


def _naive(moment: datetime) -> datetime:
    """UTC without tzinfo: SQLite hands back naive datetimes, PostgreSQL aware ones."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def delivery_id_for(partner: str, name: str) -> str:
    """Content-derived: the same partner re-sending the same delivery name gets the same id."""
    return "d" + hashlib.sha256(f"{partner}\n{name}".encode()).hexdigest()[:31]


def _staging(partner: str, name: str, index: int) -> str:
    return f"uploads/{partner}/{delivery_key(name)}/{index:05d}"


async def _read_limited(request: Request, limit: int, what: str) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge("body_too_large", f"the {what} is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge("body_too_large", f"the {what} is over the {limit} byte limit")
    return bytes(body)


REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
DOCS_CSP = ("default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; style-src 'unsafe-inline' "
            "https://cdn.jsdelivr.net; img-src data: https://fastapi.tiangolo.com; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class _Guard:
    """Pure ASGI: refuses a request with too many headers (431), and puts security headers on every response
    (a strict Content-Security-Policy: reports are self-contained HTML; /docs may load Swagger UI's CDN)."""

    def __init__(self, app, max_headers: int, max_header_bytes: int):
        self.app, self.max_headers, self.max_header_bytes = app, max_headers, max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = DOCS_CSP if scope["path"] in ("/docs", "/redoc", "/docs/oauth2-redirect") else REPORT_CSP
        extra = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", csp.encode()),
                 (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                 (b"cross-origin-resource-policy", b"same-origin")]

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


def _json_body(schema_ref: str) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": schema_ref}}}}}


_ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 429)}


def create_app(settings: Settings, config: ServiceConfig = ServiceConfig(), *, store: ObjectStore | None = None,
               catalog: Catalog | None = None) -> FastAPI:
    """The service over the configured store and catalog (or the ones given)."""
    store = store or open_store(settings=settings)
    if isinstance(store, S3Store):
        store.ensure_bucket()
    catalog = catalog or Catalog(settings.effective_catalog_url)
    catalog.upgrade()
    secret = (config.upload_secret or secrets.token_hex(32)).encode()
    uploads = Uploads(store, secret, config.part_size)
    limiter = RateLimiter(config.rate_per_s, config.rate_burst)
    validator = ThreadPoolExecutor(1, thread_name_prefix="validate")
    audit = AuditWriter(catalog)

    def validate(delivery_id: str) -> None:
        from partners.validate import validate_delivery

        try:
            validate_delivery(store, catalog, delivery_id, bounds=config.bounds,
                              probe_timeout_s=config.probe_timeout_s)
        except Exception:  # the partner sees status "error"; the operator sees the traceback in the log
            log.exception("validation of delivery %s failed", delivery_id)
            with writing(catalog) as session:
                session.get(Delivery, delivery_id).status = "error"

    def expire_abandoned() -> int:
        """Expire open deliveries idle for open_delivery_ttl_s: staged parts removed, multipart uploads aborted,
        status `expired` (re-sending the same manifest reopens it); and drop staged parts a crash left behind."""
        cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=config.open_delivery_ttl_s)
        expired = 0
        with writing(catalog) as session:
            for delivery in session.scalars(select(Delivery).where(Delivery.status == "open")).all():
                files = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id)).all()
                last = max([_naive(delivery.created_at)] + [_naive(f.updated_at) for f in files])
                if last > cutoff:
                    continue
                detail = session.get(DeliveryDetail, delivery.id)
                for row in files:
                    if row.state == "pending":
                        uploads.discard(file_key(delivery.partner_id, detail.name, row.path), row.upload_id,
                                        _staging(delivery.partner_id, detail.name, row.idx))
                        row.upload_id = None
                _drop_staging(f"uploads/{delivery.partner_id}/{delivery_key(detail.name)}")
                delivery.status = "expired"
                detail.summary = {**(detail.summary or {}), "expired": (
                    f"no activity for {config.open_delivery_ttl_s / 3600:g} h: the parts sent were removed; run "
                    "`alliance deliver` again (the same manifest reopens this delivery) or start a new one")}
                expired += 1
        _drop_staging("uploads", older_than_s=3600.0)
        return expired

    def _drop_staging(prefix: str, older_than_s: float | None = None) -> None:
        """file:// only: a staging folder (or, with older_than_s, the temporary files of part writes a crash
        interrupted: hidden, so the store's listing never shows them)."""
        import shutil

        root = getattr(store, "root", None)
        if isinstance(store, S3Store) or root is None or not (root / prefix).is_dir():
            return
        if older_than_s is None:
            shutil.rmtree(root / prefix, ignore_errors=True)
            return
        now = time.time()
        for path in (root / prefix).rglob(".part-*"):
            try:
                if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime > older_than_s:
                    path.unlink()
            except OSError:
                pass

    def reaper(stop: threading.Event) -> None:
        while True:
            try:
                expired = expire_abandoned()
                if expired:
                    log.info("expired %d abandoned deliveries", expired)
            except Exception:  # keep reaping later; say so loudly
                log.exception("could not expire abandoned deliveries")
            if stop.wait(config.reap_interval_s):
                return

    app_expire = expire_abandoned

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        with catalog.session() as session:  # validations a previous process did not finish
            pending = session.scalars(select(Delivery.id).where(Delivery.status == "validating")).all()
        for delivery_id in pending:
            validator.submit(validate, delivery_id)
        audit.start()
        validator.submit(_warm_up)  # GX takes seconds to import: pay it now, not in the first partner's wait
        stop_reaper = threading.Event()
        reaping = threading.Thread(target=reaper, args=(stop_reaper,), name="reaper", daemon=True)
        reaping.start()
        yield
        stop_reaper.set()
        reaping.join(10)
        audit.stop()
        validator.shutdown(wait=True, cancel_futures=False)

    app = FastAPI(title="Alliance delivery service", version=CONTRACT_VERSION, lifespan=lifespan,
                  description="Deliver recordings under the Alliance data contract. Every call but the part uploads "
                              "needs `Authorization: Bearer <token>`; every id is scoped to the token's partner.")
    app.state.store, app.state.catalog, app.state.config, app.state.validator = store, catalog, config, validator
    app.state.expire_abandoned = app_expire
    app.add_middleware(_Guard, max_headers=config.max_headers, max_header_bytes=config.max_header_bytes)
    bearer = HTTPBearer(auto_error=False)

    # ------------------------------------------------------------------ errors, audit

    @app.exception_handler(PartnerError)
    async def _partner_error(_request: Request, e: PartnerError):
        headers = {"Retry-After": str(max(1, round(e.retry_after_s)))} if isinstance(e, RateLimited) else None
        return JSONResponse(ErrorOut(error=e.reason, detail=str(e), problems=e.problems).model_dump(),
                            status_code=e.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, e: RequestValidationError):
        problems = [{"field": ".".join(str(p) for p in err.get("loc", ())), "detail": str(err.get("msg", ""))}
                    for err in e.errors()]
        first = problems[0] if problems else {"field": "", "detail": "invalid request"}
        return JSONResponse(ErrorOut(error="request_invalid", detail=f"{first['field']}: {first['detail']}",
                                     problems=problems).model_dump(), status_code=422)

    @app.exception_handler(AllianceError)
    async def _kernel_error(_request: Request, e: AllianceError):
        status, reason = (400, "invalid_key") if isinstance(e, InvalidKey) else (
            (404, "not_found") if isinstance(e, KeyNotFound) else (503, "unavailable"))
        if status == 503:
            log.error("store or catalog failure: %s", e)
        return JSONResponse(ErrorOut(error=reason, detail=str(e)).model_dump(), status_code=status)

    safe_target = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

    @app.middleware("http")
    async def _audit(request: Request, call_next):
        response = await call_next(request)
        principal: Principal | None = getattr(request.state, "principal", None)
        route = request.scope.get("route")
        name = getattr(route, "name", "")
        if route is None and request.url.path.startswith("/uploads/"):
            name, route = "upload_part", "unmatched"  # a mangled part URL is a refused part upload too
        # every partner action and refused token; part PUTs carry no token: their refusals are kept (a tampered,
        # expired or re-targeted URL leaves a trace), their successes are not (one per part would drown the log)
        refused_part = name == "upload_part" and response.status_code >= 400
        # a request the service could not serve (catalog or store down) is kept even before a partner is known
        unserved = response.status_code >= 500
        if route is None or name == "health" or (name == "upload_part" and not refused_part) or (
                principal is None and response.status_code != 401 and not refused_part and not unserved):
            return response
        params = request.scope.get("path_params", {})
        target = params.get("delivery_id") or params.get("recording_id")
        event = AuditEvent(at=utcnow(), partner_id=principal.partner if principal else None,
                           token_id=principal.token_id if principal else None, action=name,
                           target=target if target and safe_target.match(str(target)) else None,
                           status=response.status_code,
                           detail={"method": request.method, "file": params.get("index"), "part": params.get("part")})
        audit.add(event)
        return response

    def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        client = request.client.host if request.client else "unknown"
        if credentials is None:
            limiter.take(f"ip:{client}")
            who = authenticate(catalog, "")
        else:
            try:
                who = authenticate(catalog, credentials.credentials)
            except PartnerError:
                limiter.take(f"ip:{client}")  # guessing tokens is slowed down per address
                raise
        limiter.take(f"token:{who.token_id}")
        request.state.principal = who
        return who

    # ------------------------------------------------------------------ helpers over the catalog

    def _own_delivery(session, who: Principal, delivery_id: str) -> tuple[Delivery, DeliveryDetail]:
        delivery = session.get(Delivery, delivery_id)
        detail = session.get(DeliveryDetail, delivery_id)
        if delivery is None or detail is None or delivery.partner_id != who.partner:
            raise NotFound("delivery_not_found", f"no delivery {delivery_id} for partner {who.partner}")
        return delivery, detail

    def _own_file(session, delivery_id: str, index: int) -> DeliveryFile:
        row = session.scalar(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                        DeliveryFile.idx == index))
        if row is None:
            raise NotFound("file_not_found", f"delivery {delivery_id} has no file {index}")
        return row

    def _status(session, delivery: Delivery, detail: DeliveryDetail) -> DeliveryStatus:
        files = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id)
                                .order_by(DeliveryFile.idx)).all()
        done = delivery.status in FINAL
        return DeliveryStatus(
            id=delivery.id, partner=delivery.partner_id, delivery=detail.name, status=delivery.status,
            contract_version=delivery.contract_version, created_at=delivery.created_at,
            completed_at=delivery.completed_at, summary=detail.summary or {},
            files=[FileState(index=f.idx, path=f.path, kind=f.kind, bytes=f.bytes, sha256=f.sha256, state=f.state,
                             reason=f.reason) for f in files],
            report_url=f"/deliveries/{delivery.id}/report.json" if done else None,
            report_html_url=f"/deliveries/{delivery.id}/report" if done else None,
            report_key=delivery.report_key)

    # ------------------------------------------------------------------ routes

    @app.get("/healthz", name="health", include_in_schema=False)
    def health() -> dict:
        return {"ok": True}

    @app.get("/me", response_model=WhoAmI, responses=_ERRORS, name="whoami")
    def whoami(who: Principal = Depends(principal)) -> WhoAmI:
        return WhoAmI(partner=who.partner, token_id=who.token_id)

    def _open(who: Principal, raw: bytes) -> tuple[int, DeliveryStatus]:
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
            return 200, _status(session, existing, session.get(DeliveryDetail, delivery_id))

        with writing(catalog) as session:
            existing = session.get(Delivery, delivery_id)
            if existing is not None:
                return answer_existing(session, existing)
        key = manifest_key(who.partner, manifest.delivery)
        try:
            with writing(catalog) as session:
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
                store.put_bytes(key, canonical)
                return 201, _status(session, delivery, detail)
        except (CatalogError, IntegrityError) as e:
            if not isinstance(e, IntegrityError) and not isinstance(e.__cause__, IntegrityError):
                raise
        with writing(catalog) as session:  # another request opened this name first: same manifest or a 409
            return answer_existing(session, session.get(Delivery, delivery_id))

    @app.post("/deliveries", response_model=DeliveryStatus, status_code=201, name="open_delivery",
              responses={**_ERRORS, 200: {"model": DeliveryStatus, "description": "the same delivery, re-sent"}},
              openapi_extra=_json_body("#/components/schemas/DeliveryManifest"))
    async def open_delivery(request: Request, who: Principal = Depends(principal)):
        """Open a delivery with its manifest; re-sending the same manifest returns the same delivery."""
        raw = await _read_limited(request, config.manifest.max_bytes, "manifest")
        status, body = await run_in_threadpool(_open, who, raw)
        return JSONResponse(body.model_dump(mode="json"), status_code=status)

    @app.get("/deliveries", response_model=list[DeliveryStatus], responses=_ERRORS, name="list_deliveries")
    def list_deliveries(who: Principal = Depends(principal),
                        limit: int = Query(100, ge=1, le=1000)) -> list[DeliveryStatus]:
        with catalog.session() as session:
            rows = session.scalars(select(Delivery).where(Delivery.partner_id == who.partner)
                                   .order_by(Delivery.created_at.desc()).limit(limit)).all()
            return [_status(session, d, session.get(DeliveryDetail, d.id)) for d in rows
                    if session.get(DeliveryDetail, d.id) is not None]

    @app.get("/deliveries/{delivery_id}", response_model=DeliveryStatus, responses=_ERRORS, name="get_delivery")
    def get_delivery(delivery_id: str = Path(pattern=DELIVERY_ID),
                     who: Principal = Depends(principal)) -> DeliveryStatus:
        with catalog.session() as session:
            return _status(session, *_own_delivery(session, who, delivery_id))

    @app.post("/deliveries/{delivery_id}/files/{index}/upload", response_model=UploadPlan, responses=_ERRORS,
              name="plan_upload")
    def plan_upload(request: Request, delivery_id: str = Path(pattern=DELIVERY_ID),
                    index: int = Path(ge=0, le=100_000), who: Principal = Depends(principal)) -> UploadPlan:
        """Presigned URLs for the parts of one file not yet received (a resumed upload re-sends nothing)."""
        with writing(catalog) as session:
            delivery, detail = _own_delivery(session, who, delivery_id)
            row = _own_file(session, delivery_id, index)
            layout = part_layout(row.bytes, config.part_size)
            plan = UploadPlan(index=index, path=row.path, state=row.state, part_size=config.part_size,
                              parts_total=len(layout))
            if delivery.status != "open" or row.state != "pending":
                plan.done = [p.number for p in layout]
                return plan
            key = file_key(who.partner, detail.name, row.path)
            staging = _staging(who.partner, detail.name, index)
            if row.bytes == 0:  # nothing to send: the empty object is written here
                store.put_bytes(key, b"")
                row.state, row.updated_at = "uploaded", utcnow()
                plan.state = "uploaded"
                return plan
            if row.upload_id is None and isinstance(store, S3Store):
                started = uploads.begin(key)
                claimed = session.execute(update(DeliveryFile).where(
                    DeliveryFile.id == row.id, DeliveryFile.upload_id.is_(None)).values(upload_id=started)).rowcount
                if claimed:
                    row.upload_id = started
                else:  # a concurrent request opened one first: use that one, drop ours
                    uploads.discard(key, started, staging)
                    session.refresh(row)
            have = uploads.received(key, row.upload_id, staging)
            plan.done = sorted(p.number for p in layout if have.get(p.number) == p.bytes)
            base = str(request.base_url).rstrip("/")
            plan.urls = [PartUrl(part=p.number, bytes=p.bytes, url=uploads.part_url(
                key, row.upload_id, p, config.url_expiry_s, f"{base}/uploads/{delivery_id}/{index}/{p.number}",
                who.token_id))
                for p in layout if p.number not in plan.done]
            plan.expires_at = datetime.now(timezone.utc) + timedelta(seconds=config.url_expiry_s)
            return plan

    @app.put("/uploads/{delivery_id}/{index}/{part}", status_code=200, name="upload_part",
             responses={**_ERRORS, 200: {"description": "part stored"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_part(request: Request, delivery_id: str = Path(pattern=DELIVERY_ID),
                          index: int = Path(ge=0, le=100_000), part: int = Path(ge=1, le=10_000),
                          tok: str = Query(pattern=r"^[0-9a-f]{16}$"), expires: int = Query(ge=0, le=1 << 40),
                          sig: str = Query(pattern=r"^[0-9a-f]{64}$")):
        """A file:// store's stand-in for S3's presigned part PUT: the signed URL is the credential, and it lives
        only as long as the token it was issued to (a revoked or rotated token ends it at once)."""
        def lookup() -> tuple[str, str, PartSpec]:
            with catalog.session() as session:
                delivery = session.get(Delivery, delivery_id)
                detail = session.get(DeliveryDetail, delivery_id)
                row = session.scalar(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                                DeliveryFile.idx == index))
                layout = part_layout(row.bytes, config.part_size) if row is not None else []
                if (isinstance(store, S3Store) or delivery is None or detail is None or row is None
                        or part > len(layout)):
                    raise NotFound("upload_not_found", "no such upload: ask for part URLs with "
                                   f"POST /deliveries/{delivery_id}/files/{index}/upload")
                spec = layout[part - 1]
                uploads.check_signature(request.url.path, expires, sig, spec.bytes, tok)
                issued_to = session.get(ApiToken, tok)
                if issued_to is None or issued_to.revoked_at is not None or issued_to.partner_id != delivery.partner_id:
                    raise Forbidden("token_revoked", "the token these upload URLs were issued to has been revoked "
                                    "or rotated: ask for new URLs with a valid token")
                if delivery.status != "open" or row.state != "pending":
                    raise Conflict("upload_closed", f"file {index} of delivery {delivery_id} is {row.state}; "
                                   "its parts can no longer change")
                return _staging(detail.partner_id, detail.name, index), row.path, spec

        staging, path, spec = await run_in_threadpool(lookup)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > spec.bytes:
            raise TooLarge("oversize_upload", f"{path} part {part}: {declared} bytes, the part holds {spec.bytes}")
        claimed = request.headers.get("x-amz-checksum-sha256")  # as S3 names it: base64 of the part's SHA-256
        digest = hashlib.sha256() if claimed is not None else None
        writer = await run_in_threadpool(store.open_write, uploads.part_key(staging, spec))
        total = 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > spec.bytes:
                    raise TooLarge("oversize_upload", f"{path} part {part}: more than its {spec.bytes} bytes")
                if digest is not None:
                    digest.update(chunk)
                await run_in_threadpool(writer.write, chunk)
            if total != spec.bytes:
                raise PartnerError("size_mismatch", f"{path} part {part}: {total} bytes arrived, the part holds "
                                   f"{spec.bytes}: send exactly the bytes the URL was issued for")
            if digest is not None and base64.b64encode(digest.digest()).decode() != claimed.strip():
                raise PartnerError("part_checksum_mismatch", f"{path} part {part}: the bytes that arrived do not "
                                   "match the part's x-amz-checksum-sha256: they were damaged on the way; send the "
                                   "part again")
        except BaseException:
            await run_in_threadpool(writer.abort)
            raise
        await run_in_threadpool(writer.close)
        return Response(status_code=200, headers={"ETag": f'"{part}-{total}"'})

    @app.post("/deliveries/{delivery_id}/files/{index}/complete", response_model=FileState, responses=_ERRORS,
              name="complete_file")
    def complete_file(delivery_id: str = Path(pattern=DELIVERY_ID), index: int = Path(ge=0, le=100_000),
                      who: Principal = Depends(principal)) -> FileState:
        """Assemble the file from its parts; every part must have arrived with its exact size."""
        with writing(catalog) as session:
            delivery, detail = _own_delivery(session, who, delivery_id)
            row = _own_file(session, delivery_id, index)
            if row.state == "pending" and delivery.status == "open":
                key = file_key(who.partner, detail.name, row.path)
                try:
                    uploads.finish(key, row.upload_id, _staging(who.partner, detail.name, index),
                                   part_layout(row.bytes, config.part_size))
                except TooLarge:
                    uploads.discard(key, row.upload_id, _staging(who.partner, detail.name, index))
                    row.upload_id = None
                    raise
                row.state, row.upload_id, row.updated_at = "uploaded", None, utcnow()
            return FileState(index=row.idx, path=row.path, kind=row.kind, bytes=row.bytes, sha256=row.sha256,
                             state=row.state, reason=row.reason)

    @app.post("/deliveries/{delivery_id}/complete", response_model=DeliveryStatus, status_code=202,
              responses=_ERRORS, name="complete_delivery")
    def complete_delivery(delivery_id: str = Path(pattern=DELIVERY_ID),
                          who: Principal = Depends(principal)) -> DeliveryStatus:
        """Close the delivery and validate it; files never uploaded are refused as file_missing in the report."""
        with writing(catalog) as session:
            delivery, detail = _own_delivery(session, who, delivery_id)
            if delivery.status in ("open", "error"):
                for row in session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                                      DeliveryFile.state == "pending")):
                    uploads.discard(file_key(who.partner, detail.name, row.path), row.upload_id,
                                    _staging(who.partner, detail.name, row.idx))
                    row.upload_id = None
                delivery.status = "validating"
                session.flush()
                validator.submit(validate, delivery_id)
            return _status(session, delivery, detail)

    def _report(who: Principal, delivery_id: str, suffix: str) -> bytes:
        with catalog.session() as session:
            delivery, detail = _own_delivery(session, who, delivery_id)
            if delivery.status not in FINAL or not delivery.report_key:
                raise NotFound("report_not_ready", f"delivery {delivery_id} is {delivery.status}; the report "
                               "exists once it is validated")
            key = delivery.report_key
        return store.get_bytes(key[: -len("report.json")] + suffix)

    @app.get("/deliveries/{delivery_id}/report.json", responses=_ERRORS, name="get_report_json")
    def get_report_json(delivery_id: str = Path(pattern=DELIVERY_ID), who: Principal = Depends(principal)):
        return Response(_report(who, delivery_id, "report.json"), media_type="application/json")

    @app.get("/deliveries/{delivery_id}/report", response_class=HTMLResponse, responses=_ERRORS,
             name="get_report_html")
    def get_report_html(delivery_id: str = Path(pattern=DELIVERY_ID), who: Principal = Depends(principal)):
        return HTMLResponse(_report(who, delivery_id, "report.html"))

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

    @app.get("/recordings", response_model=list[RecordingOut], responses=_ERRORS, name="list_recordings")
    def list_recordings(who: Principal = Depends(principal), limit: int = Query(1000, ge=1, le=10_000)):
        with catalog.session() as session:
            rows = session.scalars(select(Recording).where(Recording.partner_id == who.partner)
                                   .order_by(Recording.accepted_at).limit(limit)).all()
            found = [_recording_out(r) for r in rows]
            for credit in _credits(session, who):
                row = session.get(Recording, credit.target)
                if row is not None:
                    found.append(_credited_out(row, credit))
            return sorted(found, key=lambda r: r.accepted_at.replace(tzinfo=None))[:limit]

    @app.get("/recordings/{recording_id}", response_model=RecordingOut, responses=_ERRORS, name="get_recording")
    def get_recording(recording_id: str = Path(pattern=RECORDING_ID), who: Principal = Depends(principal)):
        with catalog.session() as session:
            return _out(*_own_recording(session, who, recording_id))

    @app.post("/recordings/{recording_id}/revoke", response_model=RecordingOut, responses=_ERRORS,
              name="revoke_recording", openapi_extra=_json_body("#/components/schemas/RevokeIn"))
    async def revoke_recording(request: Request, recording_id: str = Path(pattern=RECORDING_ID),
                               who: Principal = Depends(principal)):
        """Consent withdrawn: the recording is marked revoked with the time and reason; datasets honour it."""
        raw = await _read_limited(request, config.max_json_body, "request")
        try:
            body = RevokeIn.model_validate_json(raw)
        except ValueError as e:
            raise PartnerError("request_invalid", f"expected {{\"reason\": \"...\"}}: {str(e).splitlines()[0]}") from e
        if "\x00" in body.reason:
            raise PartnerError("request_invalid", "the reason may not contain NUL characters")

        def revoke() -> RecordingOut:
            with writing(catalog) as session:
                row, credit = _own_recording(session, who, recording_id)
                if credit is not None:  # the partner's own credit is revoked; the content too, neutrally worded
                    if not (credit.detail or {}).get("revoked_at"):
                        credit.detail = {**(credit.detail or {}), "revoked_at": utcnow().isoformat(),
                                         "revoke_reason": body.reason}
                    if row.status != "revoked":
                        row.status, row.revoked_at = "revoked", utcnow()
                        row.revoke_reason = "consent withdrawn by a partner who delivered identical content"
                elif row.status != "revoked":
                    row.status, row.revoked_at, row.revoke_reason = "revoked", utcnow(), body.reason
                session.flush()
                return _out(row, credit)
        return (await run_in_threadpool(revoke)).model_dump(mode="json")

    @app.get("/audit", response_model=list[AuditOut], responses=_ERRORS, name="list_audit")
    def list_audit(who: Principal = Depends(principal), limit: int = Query(100, ge=1, le=1000)):
        audit.flush()
        with catalog.session() as session:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.partner_id == who.partner)
                                   .order_by(AuditEvent.id.desc()).limit(limit)).all()
            return [AuditOut(at=r.at, action=r.action, target=r.target, status=r.status, token_id=r.token_id)
                    for r in rows]

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (DeliveryManifest, RevokeIn):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return app

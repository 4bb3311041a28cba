"""The delivery service (FastAPI): builds the app from its rooms (per-partner tokens, presigned multipart uploads,
validation, reports, revocation, the audit trail) and runs its background threads for the app's lifetime."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from alliance.catalog import Catalog
from alliance.settings import Settings
from alliance.store import ObjectStore, S3Store, open_store
from partners.api import RevokeIn, WhoAmI
from partners.auditlog import AuditWriter, set_aside_in_store
from partners.background import reap, resume_validations, warm_up
from partners.config import ServiceConfig
from partners.contract import CONTRACT_VERSION, DeliveryManifest
from partners.deps import ERRORS, Caller, ServiceState
from partners.http import install as install_http
from partners.ratelimit import RateLimiter
from partners.routes import audit, deliveries, recordings, uploads
from partners.uploads import Uploads

__all__ = ["ServiceConfig", "create_app"]


def service_state(settings: Settings, config: ServiceConfig, store: ObjectStore | None = None,
                  catalog: Catalog | None = None) -> ServiceState:
    """The service's shared parts over the configured store and catalog (or the ones given); the catalog prepared (the
    embedded SQLite one upgrades itself, a server database behind the code stops the service saying what to run)."""
    store = store or open_store(settings=settings)
    if isinstance(store, S3Store):
        store.ensure_bucket()
    catalog = catalog or Catalog(settings.effective_catalog_url)
    catalog.prepare()
    secret = (config.upload_secret or secrets.token_hex(32)).encode()
    return ServiceState(
        config=config, store=store, catalog=catalog, uploads=Uploads(store, secret, config.part_size),
        limiter=RateLimiter(config.rate_per_s, config.rate_burst, config.rate_max_buckets),
        audit=AuditWriter(catalog, set_aside_in_store(store), interval_s=config.audit_interval_s,
                          max_attempts=config.audit_max_attempts, max_backoff_s=config.audit_max_backoff_s,
                          max_queued=config.audit_max_queued),
        validator=ThreadPoolExecutor(1, thread_name_prefix="validate"))


@asynccontextmanager
async def _lifespan(app: FastAPI):
    state: ServiceState = app.state.service
    resume_validations(state)
    state.audit.start()
    state.validator.submit(warm_up)  # GX takes seconds to import: pay it now, not in the first partner's wait
    stop_reaper = threading.Event()
    reaper = threading.Thread(target=reap, args=(state, stop_reaper), name="reaper", daemon=True)
    reaper.start()
    yield
    stop_reaper.set()
    reaper.join(10)
    state.audit.stop()
    state.validator.shutdown(wait=True, cancel_futures=False)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the bodies that routes read themselves (the manifest, a revocation)."""
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


def create_app(settings: Settings, config: ServiceConfig = ServiceConfig(), *, store: ObjectStore | None = None,
               catalog: Catalog | None = None) -> FastAPI:
    """The service over the configured store and catalog (or the ones given)."""
    app = FastAPI(title="Alliance delivery service", version=CONTRACT_VERSION, lifespan=_lifespan,
                  description="Deliver recordings under the Alliance data contract. Every call but the part uploads "
                              "needs `Authorization: Bearer <token>`; every id is scoped to the token's partner.")
    app.state.service = service_state(settings, config, store, catalog)
    install_http(app, config.max_headers, config.max_header_bytes)
    app.middleware("http")(audit.record_request)  # wraps the guard: an event has the status the client got

    @app.get("/healthz", name="health", include_in_schema=False)
    def health() -> dict:
        return {"ok": True}

    @app.get("/me", response_model=WhoAmI, responses=ERRORS, name="whoami")
    def whoami(who: Caller) -> WhoAmI:
        return WhoAmI(partner=who.partner, token_id=who.token_id)

    for room in (deliveries, uploads, recordings, audit):
        app.include_router(room.router)
    app.openapi = lambda: _openapi(app)
    return app

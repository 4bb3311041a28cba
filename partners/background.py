"""The service's work off the request path: validating completed deliveries and expiring abandoned ones."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from alliance.models import Delivery, DeliveryDetail, DeliveryFile
from alliance.store import S3Store
from partners.contract import delivery_key
from partners.db import writing
from partners.deliveries import discard_pending
from partners.deps import ServiceState

log = logging.getLogger(__name__)


def warm_up() -> None:
    import great_expectations  # noqa: F401

    import partners.validate  # noqa: F401


def validate(state: ServiceState, delivery_id: str) -> None:
    """Validate one completed delivery; a crash leaves it in status `error` (the traceback is in the log)."""
    from partners.validate import validate_delivery

    try:
        validate_delivery(state.store, state.catalog, delivery_id, bounds=state.config.bounds,
                          probe_timeout_s=state.config.probe_timeout_s)
    except Exception:  # the partner sees status "error"; the operator sees the traceback in the log
        log.exception("validation of delivery %s failed", delivery_id)
        with writing(state.catalog) as session:
            session.get(Delivery, delivery_id).status = "error"


def resume_validations(state: ServiceState) -> None:
    """Queue the validations a previous process did not finish."""
    with state.catalog.session() as session:
        pending = session.scalars(select(Delivery.id).where(Delivery.status == "validating")).all()
    for delivery_id in pending:
        state.validator.submit(validate, state, delivery_id)


def _naive(moment: datetime) -> datetime:
    """UTC without tzinfo: SQLite hands back naive datetimes, PostgreSQL aware ones."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def expire_abandoned(state: ServiceState) -> int:
    """Expire open deliveries idle for open_delivery_ttl_s: staged parts removed, multipart uploads aborted,
    status `expired` (re-sending the same manifest reopens it); and drop staged parts a crash left behind."""
    ttl_s = state.config.open_delivery_ttl_s
    cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=ttl_s)
    expired = 0
    with writing(state.catalog) as session:
        for delivery in session.scalars(select(Delivery).where(Delivery.status == "open")).all():
            files = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id)).all()
            last = max([_naive(delivery.created_at)] + [_naive(f.updated_at) for f in files])
            if last > cutoff:
                continue
            detail = session.get(DeliveryDetail, delivery.id)
            discard_pending(state, detail, files)
            _drop_staging(state, f"uploads/{delivery.partner_id}/{delivery_key(detail.name)}")
            delivery.status = "expired"
            detail.summary = {**(detail.summary or {}), "expired": (
                f"no activity for {ttl_s / 3600:g} h: the parts sent were removed; run "
                "`alliance deliver` again (the same manifest reopens this delivery) or start a new one")}
            expired += 1
    _drop_staging(state, "uploads", older_than_s=3600.0)
    return expired


def _drop_staging(state: ServiceState, prefix: str, older_than_s: float | None = None) -> None:
    """file:// only: a staging folder (or, with older_than_s, the temporary files of part writes a crash
    interrupted: hidden, so the store's listing never shows them)."""
    root = getattr(state.store, "root", None)
    if isinstance(state.store, S3Store) or root is None or not (root / prefix).is_dir():
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


def reap(state: ServiceState, stop: threading.Event) -> None:
    """The reaper thread: expire abandoned deliveries every reap_interval_s until `stop` is set."""
    while True:
        try:
            expired = expire_abandoned(state)
            if expired:
                log.info("expired %d abandoned deliveries", expired)
        except Exception:  # keep reaping later; say so loudly
            log.exception("could not expire abandoned deliveries")
        if stop.wait(state.config.reap_interval_s):
            return

"""Runs in the catalog: the one way a launching command records a run as running, failed or succeeded."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy.orm import Session

from alliance.catalog import Catalog
from alliance.errors import CatalogError
from alliance.models import Run

log = logging.getLogger(__name__)
RUNNING, FAILED, SUCCEEDED = "running", "failed", "succeeded"
STATUSES = (RUNNING, FAILED, SUCCEEDED)


def utc(at: datetime | None = None) -> datetime:
    """`at` (now by default) as a timezone-aware UTC time; a naive time is taken to be UTC already."""
    at = at or datetime.now(timezone.utc)
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def plain(value: Any) -> Any:
    """`value` as JSON data (tuples and other iterables as lists, sets sorted, paths and dates as text), so any
    config or summary can be stored."""
    def default(o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if hasattr(o, "__iter__") and not isinstance(o, (str, bytes)):
            return list(o)
        return str(o)

    return json.loads(json.dumps(value, default=default))


def write_run(session: Session, run_id: str, kind: str, status: str, *, config: dict[str, Any] | None = None,
              summary: dict[str, Any] | None = None, started_at: datetime | None = None) -> Run:
    """Insert or update run `run_id` in `session`. A run first recorded keeps its start time and config unless
    new ones are given; a failed or succeeded run gets its finish time, a running one none."""
    if status not in STATUSES:
        raise ValueError(f"run status {status!r}: use one of {', '.join(STATUSES)}")
    row = session.get(Run, run_id)
    if row is None:
        row = Run(id=run_id, kind=kind, config={}, summary={}, started_at=utc(started_at))
        session.add(row)
    elif started_at is not None:
        row.started_at = utc(started_at)
    row.kind, row.status = kind, status
    if config is not None:
        row.config = plain(config)
    if summary is not None:
        row.summary = plain(summary)
    row.finished_at = None if status == RUNNING else utc()
    session.flush()
    return row


def record_run(catalog: Catalog, run_id: str, kind: str, status: str, **fields: Any) -> None:
    """write_run in a session of its own (committed on return)."""
    with catalog.session() as session:
        write_run(session, run_id, kind, status, **fields)


def record_failure(catalog: Catalog, run_id: str, kind: str, error: BaseException,
                   summary: dict[str, Any] | None = None) -> None:
    """Record the run as failed with `error`; when the catalog is what failed, only warn: the caller raises the
    run's own error, which says more than the catalog's."""
    try:
        record_run(catalog, run_id, kind, FAILED,
                   summary={**(summary or {}), "error": f"{type(error).__name__}: {error}"[:2000]})
    except CatalogError as unrecorded:
        log.warning("run %s failed and could not be recorded as failed: %s", run_id, unrecorded)


@dataclass
class RunRecord:
    """What a recorded run fills in while it works: its summary is saved when it ends."""

    run_id: str
    kind: str
    summary: dict[str, Any] = field(default_factory=dict)


@contextmanager
def recorded_run(catalog_url: str | None, run_id: str, kind: str, config: dict[str, Any]) -> Iterator[RunRecord]:
    """Record the run as running with its config, then as succeeded with `record.summary` when the block ends, or
    as failed with the error when it raises (the error goes on). With no catalog URL nothing is recorded.

    An embedded SQLite catalog is created or upgraded on first use; a server database is never migrated here
    (Catalog.prepare says to run `alliance catalog upgrade`), and that is checked before the work starts."""
    record = RunRecord(run_id, kind)
    if catalog_url is None:
        yield record
        return
    catalog = Catalog(catalog_url)
    try:
        catalog.prepare()
        started_at = utc()
        record_run(catalog, run_id, kind, RUNNING, config=config, summary={}, started_at=started_at)
        try:
            yield record
        except BaseException as e:
            record_failure(catalog, run_id, kind, e, record.summary)
            raise
        record_run(catalog, run_id, kind, SUCCEEDED, summary=record.summary)
    finally:
        catalog.dispose()

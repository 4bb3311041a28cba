"""The audit writer: events reach the catalog in batches from one thread that never dies; what the catalog will not
take after bounded, backed-off retries is set aside as JSON lines a person can read, never dropped silently."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from itertools import count
from typing import Callable

from alliance.catalog import Catalog
from alliance.models import AuditEvent
from alliance.store import ObjectStore
from partners.db import writing

log = logging.getLogger(__name__)
SET_ASIDE_PREFIX = "reports/_audit"  # '_' cannot start a partner name: no partner's reports live here

SetAside = Callable[[list[dict], str], None]  # (events as records, why) -> kept somewhere readable


def event_record(event: AuditEvent) -> dict:
    """An event as one JSON object (the columns of the audit table)."""
    at = event.at.isoformat() if event.at else None
    return {"at": at, "partner_id": event.partner_id, "token_id": event.token_id, "action": event.action,
            "target": event.target, "status": event.status, "detail": event.detail}


def log_events(records: list[dict], why: str) -> None:
    """The last resort: the events, one JSON line each, in the service's log."""
    lines = "\n".join(json.dumps(r, default=str, sort_keys=True) for r in records)
    log.error("%d audit events were not written to the catalog (%s); here they are:\n%s", len(records), why, lines)


def set_aside_in_store(store: ObjectStore) -> SetAside:
    """Events set aside as reports/_audit/unwritten-{time}-{n}.jsonl in the store (or, if that fails too, the log)."""
    sequence = count()

    def set_aside(records: list[dict], why: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        key = f"{SET_ASIDE_PREFIX}/unwritten-{stamp}-{next(sequence)}.jsonl"
        body = "".join(json.dumps({**r, "why": why}, default=str, sort_keys=True) + "\n" for r in records)
        try:
            store.put_bytes(key, body.encode())
        except Exception as e:  # the store is down as well: the log is what is left
            log_events(records, f"{why}; and the store refused {key}: {e}")
            return
        log.error("%d audit events were not written to the catalog (%s): they are in %s", len(records), why, key)

    return set_aside


class AuditWriter:
    """Appends audit events in batches from a background thread, so a request does not wait for a commit.

    Events reach the catalog within `interval_s` while it answers. A batch it refuses stays queued and is retried
    with doubling delays (up to `max_backoff_s`); after `max_attempts` failures in a row the events are tried one by
    one (a single bad event does not hold back the rest) and those still refused are set aside. At most `max_queued`
    events wait; beyond that the oldest are set aside at once. stop() writes or sets aside whatever is left."""

    def __init__(self, catalog: Catalog, set_aside: SetAside = log_events, *, interval_s: float = 0.2,
                 max_attempts: int = 8, max_backoff_s: float = 15.0, max_queued: int = 50_000):
        self.catalog, self.set_aside = catalog, set_aside
        self.interval_s, self.max_attempts, self.max_backoff_s = interval_s, max_attempts, max_backoff_s
        self.max_queued = max_queued
        self.queue: list[AuditEvent] = []
        self.overflow: list[AuditEvent] = []  # pushed out of a full queue; set aside by the thread, not the request
        self.failures = 0  # failed writes in a row of what heads the queue
        self.lock = threading.Lock()
        self.flushing = threading.Lock()
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, event: AuditEvent) -> None:
        with self.lock:
            self.queue.append(event)
            self._bound()

    def _bound(self) -> None:
        """With the lock held: move the oldest events beyond max_queued to the overflow."""
        excess = len(self.queue) - self.max_queued
        if excess > 0:
            self.overflow += self.queue[:excess]
            del self.queue[:excess]
            self.wake.set()

    def flush(self) -> None:
        """Write what is queued now; on failure it goes back to the head of the queue and the error is raised."""
        with self.flushing:
            with self.lock:
                batch, self.queue = self.queue, []
            if not batch:
                return
            try:
                self._write(batch)
            except Exception:
                with self.lock:  # ahead of what came in meanwhile
                    self.queue = [_fresh(event) for event in batch] + self.queue
                    self._bound()
                raise

    def _write(self, events: list[AuditEvent]) -> None:
        with writing(self.catalog) as session:
            session.add_all(events)

    def step(self) -> float:
        """One round of the thread: set aside the overflow, try the queue; returns the seconds to the next round."""
        self._set_aside_overflow()
        try:
            self.flush()
        except Exception as e:
            self.failures += 1
            if self.failures < self.max_attempts:
                delay = min(self.max_backoff_s, self.interval_s * 2 ** self.failures)
                log.error("could not write the queued audit events (attempt %d of %d), retrying in %.2f s: %s: %s",
                          self.failures, self.max_attempts, delay, type(e).__name__, e)
                return delay
            self._give_up(f"{self.failures} attempts failed, the last with {type(e).__name__}: {e}")
        self.failures = 0
        return self.interval_s

    def _give_up(self, why: str) -> None:
        """Write the queued events one at a time; set aside those refused (all that are left, once the catalog has
        refused three in a row: it is down, not picky)."""
        with self.flushing:
            with self.lock:
                batch, self.queue = self.queue, []
            refused: list[AuditEvent] = []
            in_a_row = 0
            for event in batch:
                if in_a_row < 3:
                    try:
                        self._write([_fresh(event)])
                        in_a_row = 0
                        continue
                    except Exception:
                        in_a_row += 1
                refused.append(event)
            self._keep_readable(refused, why)

    def _set_aside_overflow(self) -> None:
        with self.lock:
            overflow, self.overflow = self.overflow, []
        self._keep_readable(overflow, f"more than {self.max_queued} audit events were waiting for the catalog")

    def _keep_readable(self, events: list[AuditEvent], why: str) -> None:
        if not events:
            return
        records = [event_record(e) for e in events]
        try:
            self.set_aside(records, why)
        except Exception:  # a broken sink must not cost the events: the log still shows them
            log.exception("could not set audit events aside")
            log_events(records, why)

    def _run(self) -> None:
        delay = self.interval_s
        while True:
            self.wake.wait(delay)
            self.wake.clear()
            if self.stopped.is_set():
                return
            try:
                delay = self.step()
            except Exception:  # step handles what it expects; whatever else happens, the thread lives on
                log.exception("the audit writer failed a round; trying again")
                delay = self.max_backoff_s

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """End the thread, then write what is queued, or set it aside: nothing is lost on the way out."""
        self.stopped.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
        self._set_aside_overflow()
        try:
            self.flush()
        except Exception as e:
            self._give_up(f"the service stopped while the catalog refused them: {type(e).__name__}: {e}")


def _fresh(event: AuditEvent) -> AuditEvent:
    """A transient copy of an event whose failed session may have left it attached or half-flushed."""
    return AuditEvent(at=event.at, partner_id=event.partner_id, token_id=event.token_id, action=event.action,
                      target=event.target, status=event.status, detail=dict(event.detail or {}))

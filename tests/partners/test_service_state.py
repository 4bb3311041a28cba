"""The delivery service's state stays bounded: rate-limit buckets are evicted and capped, and the audit writer
retries a failing catalog a bounded number of times, sets aside what it could not write where a person can read
it, and its thread survives any exception."""

from __future__ import annotations

import json
import logging
import threading
import time
import tracemalloc
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.errors import CatalogError
from alliance.models import AuditEvent, utcnow
from alliance.settings import Settings
from alliance.store import LocalStore
from partners.accounts import add_partner
from partners.auditlog import AuditWriter, set_aside_in_store
from partners.errors import RateLimited
from partners.ratelimit import RateLimiter
from partners.service import ServiceConfig, create_app


def wait_for(condition, timeout_s: float = 20.0, what: str = "the condition"):
    """Poll until condition() is truthy; its value, or a failure naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:g} s"
        time.sleep(0.02)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- rate-limit buckets


def test_idle_buckets_are_evicted_once_they_would_be_full_again():
    clock = Clock()
    limiter = RateLimiter(rate_per_s=10.0, burst=20, clock=clock)  # full again after 2 s idle
    for n in range(5000):
        limiter.take(f"ip:10.0.{n // 256}.{n % 256}")
    assert len(limiter.buckets) == 5000
    clock.now += 2.0
    limiter.take("token:still-here")
    assert list(limiter.buckets) == ["token:still-here"]


def test_thousands_of_distinct_callers_do_not_grow_memory_without_bound():
    limiter = RateLimiter(rate_per_s=1.0, burst=5, max_buckets=1000, clock=Clock())  # nothing ever refills
    tracemalloc.start()
    try:
        for n in range(5000):
            limiter.take(f"token:{n:016x}")
        warm = tracemalloc.get_traced_memory()[0]
        for n in range(5000, 30_000):
            limiter.take(f"token:{n:016x}")
        grown = tracemalloc.get_traced_memory()[0] - warm
    finally:
        tracemalloc.stop()
    assert len(limiter.buckets) == 1000
    assert grown < 32 << 10, f"{grown} bytes more after 25,000 more callers"


def test_an_active_caller_keeps_its_budget_while_others_come_and_go():
    limiter = RateLimiter(rate_per_s=1.0, burst=3, max_buckets=100, clock=Clock())
    for _ in range(3):
        limiter.take("token:busy")
    for n in range(50):  # fewer newcomers than the bound: the spent bucket stays
        limiter.take(f"ip:{n}")
    with pytest.raises(RateLimited):
        limiter.take("token:busy")


def test_the_service_keeps_at_most_rate_max_buckets_for_many_addresses(tmp_path):
    """Unauthenticated requests from 1,500 addresses: each is refused (401) and the buckets stay at the bound."""
    import asyncio

    config = ServiceConfig(rate_max_buckets=200)
    app = create_app(Settings(home=tmp_path / ".alliance"), config, store=LocalStore(tmp_path / "store"))

    async def knock(address: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return (await client.get("/me")).status_code

    async def knock_all() -> list[int]:
        return [await knock(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}") for n in range(1500)]

    answers = asyncio.run(knock_all())
    assert set(answers) == {401}
    assert len(app.state.service.limiter.buckets) == 200
    app.state.service.catalog.dispose()


# --------------------------------------------------------------------------- the audit writer


class InjectedCatalog:
    """A real catalog whose writes fail on demand: with `error` set every session raises it; events whose action
    is in `poison` make add_all raise `poison_error` (a bug, not an outage)."""

    def __init__(self, catalog: Catalog):
        self.catalog, self.url, self.backend = catalog, catalog.url, catalog.backend
        self.error: Exception | None = None
        self.poison: set[str] = set()
        self.poison_error: Exception = RuntimeError("injected: an event the writer cannot handle")
        self.sessions = 0

    @contextmanager
    def session(self):
        self.sessions += 1
        if self.error is not None:
            raise self.error
        with self.catalog.session() as session:
            add_all = session.add_all

            def checked(events):
                if any(e.action in self.poison for e in events):
                    raise self.poison_error
                add_all(events)

            session.add_all = checked
            yield session


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.upgrade()
    add_partner(catalog, "auditco")
    yield catalog
    catalog.dispose()


def event(action: str) -> AuditEvent:
    return AuditEvent(at=utcnow(), partner_id="auditco", action=action, status=200, detail={"method": "GET"})


def written(catalog: Catalog) -> list[str]:
    with catalog.session() as session:
        return [e.action for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("a-%"))
                                                  .order_by(AuditEvent.id))]


class Kept:
    """A set-aside sink that remembers what it was given."""

    def __init__(self):
        self.records: list[dict] = []
        self.why: list[str] = []

    def __call__(self, records: list[dict], why: str) -> None:
        self.records += records
        self.why.append(why)

    def actions(self) -> list[str]:
        return [r["action"] for r in self.records]


def outage(catalog: Catalog) -> InjectedCatalog:
    injected = InjectedCatalog(catalog)
    injected.error = CatalogError("catalog sqlite: OperationalError: injected outage")
    return injected


@contextmanager
def running(writer: AuditWriter):
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def test_a_catalog_that_stays_down_costs_bounded_retries_and_the_events_are_set_aside(catalog):
    injected, kept = outage(catalog), Kept()
    with running(AuditWriter(injected, kept, interval_s=0.01, max_attempts=4, max_backoff_s=0.05)) as writer:
        for n in range(5):
            writer.add(event(f"a-{n}"))
        wait_for(lambda: len(kept.records) == 5, what="setting the 5 events aside")
        # 4 tries of the batch, then one event at a time until the catalog has refused three in a row
        assert injected.sessions == 4 + 3, f"{injected.sessions} writes tried for one batch"
        assert kept.actions() == [f"a-{n}" for n in range(5)]
        assert "4 attempts failed" in kept.why[0] and "injected outage" in kept.why[0]
        assert writer.queue == [] and writer.thread.is_alive()

        injected.error = None  # the catalog is back: what comes now is written, what was set aside is not again
        writer.add(event("a-after"))
        wait_for(lambda: written(catalog) == ["a-after"], what="writing the event after the outage")
    assert len(kept.records) == 5


def test_a_catalog_back_before_the_retries_run_out_gets_every_event(catalog):
    injected, kept = outage(catalog), Kept()
    with running(AuditWriter(injected, kept, interval_s=0.01, max_attempts=1000, max_backoff_s=0.05)) as writer:
        writer.add(event("a-0"))
        wait_for(lambda: injected.sessions >= 3, what="three failed attempts")
        injected.error = None
        wait_for(lambda: written(catalog) == ["a-0"], what="writing the queued event once the catalog is back")
    assert kept.records == []


def test_an_unexpected_exception_neither_kills_the_thread_nor_costs_the_other_events(catalog, caplog):
    injected, kept = InjectedCatalog(catalog), Kept()
    injected.poison = {"a-poison"}
    writer = AuditWriter(injected, kept, interval_s=0.01, max_attempts=3, max_backoff_s=0.05)
    with caplog.at_level(logging.ERROR, logger="partners.auditlog"), running(writer):
        for action in ("a-0", "a-poison", "a-1"):
            writer.add(event(action))
        wait_for(lambda: kept.records, what="setting the poisoned event aside")
        assert kept.actions() == ["a-poison"]
        assert "RuntimeError" in kept.why[0] and "injected" in kept.why[0]
        assert written(catalog) == ["a-0", "a-1"]  # written one at a time once the batch had failed
        assert writer.thread.is_alive()
        writer.add(event("a-2"))
        wait_for(lambda: written(catalog)[-1:] == ["a-2"], what="writing after the bad event")
    assert "RuntimeError" in caplog.text  # the operator sees each failed attempt


def test_the_writer_thread_survives_a_failure_outside_the_catalog(catalog, caplog):
    """Even the sink failing (the store down as well) leaves the thread alive, and the events are in the log."""
    injected = InjectedCatalog(catalog)
    injected.error = ValueError("injected: not a CatalogError")

    def broken_sink(records, why):
        raise OSError("injected: the sink is down too")

    writer = AuditWriter(injected, broken_sink, interval_s=0.01, max_attempts=2, max_backoff_s=0.02)
    with caplog.at_level(logging.ERROR, logger="partners.auditlog"), running(writer):
        writer.add(event("a-lost-sink"))
        wait_for(lambda: '"action": "a-lost-sink"' in caplog.text, what="the event in the log")
        assert writer.thread.is_alive()
        injected.error = None
        writer.add(event("a-later"))
        wait_for(lambda: written(catalog) == ["a-later"], what="writing once the catalog is back")


def test_a_full_queue_sets_the_oldest_aside_and_keeps_the_newest(catalog):
    kept = Kept()
    writer = AuditWriter(outage(catalog), kept, max_attempts=100, max_queued=10)
    for n in range(25):
        writer.add(event(f"a-{n}"))
    assert len(writer.queue) == 10
    writer.step()  # one round of the thread
    assert kept.actions() == [f"a-{n}" for n in range(15)]
    assert "more than 10 audit events" in kept.why[0]
    assert [e.action for e in writer.queue] == [f"a-{n}" for n in range(15, 25)]


def test_stopping_while_the_catalog_is_down_sets_everything_aside(catalog):
    kept = Kept()
    with running(AuditWriter(outage(catalog), kept, interval_s=60.0)) as writer:
        writer.add(event("a-0"))
        writer.add(event("a-1"))
    # stop() did not raise: the shutdown of the service goes on
    assert kept.actions() == ["a-0", "a-1"] and "stopped" in kept.why[0]
    assert not writer.thread.is_alive()


def test_set_aside_events_are_json_lines_under_the_stores_reports(tmp_path, caplog):
    store = LocalStore(tmp_path / "store")
    set_aside = set_aside_in_store(store)
    records = [{"action": "open_delivery", "partner_id": "auditco", "status": 503}]
    with caplog.at_level(logging.ERROR, logger="partners.auditlog"):
        set_aside(records, "4 attempts failed")
    [info] = list(store.list("reports/_audit/"))
    assert info.key.endswith(".jsonl") and info.key in caplog.text
    lines = [json.loads(line) for line in store.get_bytes(info.key).decode().splitlines()]
    assert lines == [{**records[0], "why": "4 attempts failed"}]


def test_the_writer_thread_does_not_block_requests_while_the_catalog_is_down(catalog):
    """add() is called on the event loop: it must return at once even while writes fail and back off."""
    writer = AuditWriter(outage(catalog), Kept(), interval_s=0.01, max_attempts=1000, max_backoff_s=0.05,
                         max_queued=100)
    with running(writer):
        started = time.monotonic()
        threads = [threading.Thread(target=lambda: [writer.add(event("a-x")) for _ in range(500)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.monotonic() - started < 2.0
        assert len(writer.queue) <= 100

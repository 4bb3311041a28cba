"""Servers failing under a running job: SeaweedFS restarted mid-upload and mid-shard-write, PostgreSQL stopped during
a delivery and during an ingest run. Each job finishes, or fails with a clear error and finishes cleanly on re-run."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.settings import Settings
from alliance.store import LocalStore
from tests.reliability.conftest import record
from tests.reliability.crash import run_to_end, start, worker
from tests.reliability.servers import RestartableSeaweed, StoppablePostgres

METADATA = ('license = "CC-BY-4.0"\n[consent]\nscope = ["pretraining"]\nexpires = 2099-12-31\n[device]\n'
            'kind = "glasses"\nmodel = "F1"\nmounting = "head"\n')


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    server = RestartableSeaweed(tmp_path_factory.mktemp("faulty-seaweed")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def postgres():
    server = StoppablePostgres().start()
    yield server
    server.close()


def folder_of(root: Path, name: str, files: int, seed: int) -> Path:
    from ingest.synth import VideoSpec, write_video

    root.mkdir(parents=True)
    for i in range(files):
        write_video(root / f"{name}-{i}.mp4", VideoSpec(width=96, height=96, frames=20, scene="noise", seed=seed + i))
    (root / "delivery.toml").write_text(f'delivery = "{name}"\n' + METADATA)
    return root


def _attempt_delivery(folder: Path, url: str, token: str, **kw):
    """(verdict or None, the refusal's reason or None): a DeliveryFailed is a clear error, anything else is not."""
    from partners.client import deliver
    from partners.errors import DeliveryFailed

    try:
        return deliver(folder, url, token, wait_s=120, **kw), None
    except DeliveryFailed as e:
        assert e.reason and str(e), "a refusal without a reason"
        print(f"delivery refused: {e}")
        return None, e.reason


def _landed_whole(store, catalog: Catalog, folder: Path) -> None:
    from alliance.models import Recording

    with catalog.session() as session:
        recordings = {r.id: r.key for r in session.scalars(select(Recording))}
    for video in folder.glob("*.mp4"):
        digest = hashlib.sha256(video.read_bytes()).hexdigest()
        assert digest in recordings, f"{video.name} was not accepted"
        assert hashlib.sha256(store.get_bytes(recordings[digest])).hexdigest() == digest


def _poll(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.05)
    return value


# --------------------------------------------------------------------------- SeaweedFS restarts


def test_seaweedfs_restarted_in_the_middle_of_a_delivery(seaweed, tmp_path):
    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    store = seaweed.store()
    settings = Settings(home=tmp_path / ".alliance")
    catalog = Catalog(settings.effective_catalog_url)
    catalog.upgrade()
    token = add_partner(catalog, "faultco").token
    folder = folder_of(tmp_path / "folder", "restart-batch", 4, seed=10)
    restarted: list[float] = []

    def restart_once(path: str, part: int) -> None:
        if not restarted:
            restarted.append(0.0)
            threading.Thread(target=lambda: restarted.__setitem__(0, seaweed.restart(down_s=1.0))).start()

    with serving(settings, ServiceConfig(part_size=5 << 20, probe_timeout_s=20.0), store=store,
                 catalog=catalog) as running:
        verdict, reason = _attempt_delivery(folder, running.url, token, on_part=restart_once)
        _poll(lambda: not restarted or restarted[0] != 0.0, "the restart ending before the re-run", 60)
        reruns = 0
        while verdict is None and reruns < 2:  # seen once: a re-run answered 503 'database is locked' (SQLite)
            reruns += 1
            verdict, again = _attempt_delivery(folder, running.url, token)
        assert verdict is not None, f"{reruns} re-runs failed: {again} (first: {reason})"
    assert verdict.status == "accepted" and verdict.recordings_accepted == 4, verdict
    _landed_whole(store, catalog, folder)
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
    assert not uploads, f"{len(uploads)} multipart uploads left open"
    catalog.dispose()
    record("fault_seaweed_delivery", restarts=1, first_attempt=reason or "finished", reruns=reruns,
           down_s=round(restarted[0], 1))


def test_seaweedfs_restarted_in_the_middle_of_a_shard_write(seaweed, tmp_path):
    from pipelines.shard import run_shard
    from sharding.audit import verify_version
    from sharding.plan import ShardConfig
    from tests.reliability.test_crash_resume import SHARD_TARGET, digests, store_env
    from tests.sharding.helpers import make_selection, write_selection_table

    reference = LocalStore(tmp_path / "reference")
    write_selection_table(reference, make_selection(reference, tmp_path / "ref-media"))
    run_shard(Settings(home=tmp_path / ".ref", store_url=reference.url), "ego", "sel-1",
              config=ShardConfig(target_bytes=SHARD_TARGET, seed=4), use_beam=False)
    expected = {k: v for k, v in digests(reference, "datasets/").items()}

    store = seaweed.store()
    write_selection_table(store, make_selection(store, tmp_path / "media"))
    env = store_env(store, tmp_path / ".alliance", ALLIANCE_S3_MAX_ATTEMPTS="3")
    args = worker("shard", "ego", "sel-1", str(SHARD_TARGET), "--slow=0.05")
    process, output = start(args, env)
    deadline = time.monotonic() + 120
    while not store.exists("datasets/ego/v1/shard-000000.tar"):
        assert process.poll() is None and time.monotonic() < deadline, output.text()
        time.sleep(0.05)
    down = seaweed.restart(down_s=2.0)
    first = process.wait(120)
    outcome = "finished" if first == 0 else output.text().strip().splitlines()[-1][:200]
    if first != 0:
        assert "Error" in outcome or "error" in outcome or "failed" in outcome, outcome
        seaweed.wait_until_readable(store, "datasets/ego/v1/shard-000000.tar")
        code, out, _ = run_to_end(worker("shard", "ego", "sel-1", str(SHARD_TARGET)), env)
        assert code == 0, out
    assert digests(store, "datasets/") == expected
    assert verify_version(store, "ego", 1).ok
    record("fault_seaweed_shard", restarts=1, first_attempt=outcome, down_s=round(down, 1))


# --------------------------------------------------------------------------- PostgreSQL stopped


def test_postgresql_stopped_during_deliveries_then_started(postgres, tmp_path):
    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    url = postgres.database()
    store = LocalStore(tmp_path / "store")
    settings = Settings(home=tmp_path / ".alliance", catalog_url=url)
    catalog = Catalog(url)
    catalog.upgrade()
    token = add_partner(catalog, "pgco").token
    first = folder_of(tmp_path / "first", "before-the-outage", 1, seed=20)
    second = folder_of(tmp_path / "second", "during-the-outage", 2, seed=30)
    config = ServiceConfig(part_size=64 << 10, rate_per_s=5000.0, rate_burst=50_000, probe_timeout_s=20.0)
    with serving(settings, config, store=store, catalog=catalog) as running:
        verdict, _ = _attempt_delivery(first, running.url, token)
        assert verdict and verdict.status == "accepted"
        postgres.stop()
        try:
            during, reason = _attempt_delivery(second, running.url, token)
            me = httpx.get(f"{running.url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        finally:
            postgres.start()
        assert during is None and reason == "unavailable", (during, reason)
        assert me.status_code == 503 and me.json()["error"] == "unavailable"
        assert "Traceback" not in me.text
        verdict, again = _attempt_delivery(second, running.url, token)  # the same service, not restarted
        assert verdict is not None and verdict.status == "accepted", again
    _landed_whole(store, catalog, first)
    _landed_whole(store, catalog, second)
    catalog.dispose()
    record("fault_postgres_delivery", stops=1, during=reason)


def _audit_events(catalog: Catalog, action: str) -> list:
    from alliance.models import AuditEvent

    with catalog.session() as session:
        return session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).all()


def test_requests_refused_while_postgresql_is_down_reach_the_audit_log(postgres, tmp_path, caplog):
    """Requests the service could not serve while the catalog was down (503 before any partner is known) are
    audited: the writer keeps the failed batch queued and writes it once the catalog is back."""
    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    url = postgres.database()
    catalog = Catalog(url)
    catalog.upgrade()
    token = add_partner(catalog, "auditco").token
    settings = Settings(home=tmp_path / ".alliance", catalog_url=url)
    headers = {"Authorization": f"Bearer {token}"}
    with serving(settings, ServiceConfig(), store=LocalStore(tmp_path / "store"), catalog=catalog) as running:
        assert httpx.get(f"{running.url}/me", headers=headers).status_code == 200
        _poll(lambda: _audit_events(catalog, "whoami"), "the /me request's event in the catalog")
        postgres.stop()
        try:
            answers = [httpx.get(f"{running.url}/deliveries", headers=headers, timeout=30).status_code
                       for _ in range(3)]
            _poll(lambda: "could not write the queued audit events" in caplog.text,
                  "the audit writer failing to write them")
        finally:
            postgres.start()
        after = httpx.get(f"{running.url}/audit", headers=headers, timeout=30)
        assert after.status_code == 200, after.text  # the same token, the catalog back: served again
    events = _audit_events(catalog, "list_deliveries")
    catalog.dispose()
    assert answers == [503, 503, 503]  # the token could not be checked: unavailable, never a 401
    assert [(e.status, e.partner_id) for e in events] == [(503, None)] * 3
    assert not list(LocalStore(tmp_path / "store").list("reports/_audit/")), "nothing had to be set aside"


def test_an_outage_longer_than_the_audit_retries_leaves_the_events_in_the_store(postgres, tmp_path):
    """When the catalog stays down past the writer's bounded retries, the events are set aside as JSON lines under
    reports/_audit/ in the store, and the service goes on writing new events once the catalog is back."""
    import json

    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    url = postgres.database()
    catalog = Catalog(url)
    catalog.upgrade()
    token = add_partner(catalog, "spillco").token
    store = LocalStore(tmp_path / "store")
    config = ServiceConfig(audit_interval_s=0.05, audit_max_attempts=3, audit_max_backoff_s=0.2)
    headers = {"Authorization": f"Bearer {token}"}
    with serving(Settings(home=tmp_path / ".alliance", catalog_url=url), config, store=store,
                 catalog=catalog) as running:
        postgres.stop()
        try:
            answers = [httpx.get(f"{running.url}/deliveries", headers=headers, timeout=30).status_code
                       for _ in range(2)]
            [spilled] = _poll(lambda: list(store.list("reports/_audit/")), "the events set aside in the store")
        finally:
            postgres.start()
        assert httpx.get(f"{running.url}/me", headers=headers, timeout=30).status_code == 200
        _poll(lambda: _audit_events(catalog, "whoami"), "the event after the outage in the catalog")
    records = [json.loads(line) for line in store.get_bytes(spilled.key).decode().splitlines()]
    catalog.dispose()
    assert answers == [503, 503]
    assert [(r["action"], r["status"]) for r in records] == [("list_deliveries", 503)] * 2
    assert all("3 attempts failed" in r["why"] for r in records)


def test_the_audit_writer_keeps_its_batch_when_the_catalog_is_down(postgres):
    """A failed write puts the batch back at the head of the queue (flush raises); the next flush writes it."""
    from alliance.errors import CatalogError
    from alliance.models import AuditEvent
    from partners.accounts import add_partner
    from partners.auditlog import AuditWriter

    url = postgres.database()
    catalog = Catalog(url)
    catalog.upgrade()
    add_partner(catalog, "writerco")
    writer = AuditWriter(catalog)
    postgres.stop()
    try:
        writer.add(AuditEvent(partner_id="writerco", action="open_delivery", status=503, detail={}))
        with pytest.raises(CatalogError):
            writer.flush()
    finally:
        postgres.start()
    writer.flush()
    written = _audit_events(catalog, "open_delivery")
    catalog.dispose()
    assert len(written) == 1, "the event queued during the outage was dropped"


def test_postgresql_stopped_during_an_ingest_run(postgres, tmp_path):
    from ingest.synth import VideoSpec, write_video
    from pipelines.sinks import read_table

    folder = tmp_path / "recordings"
    write_video(folder / "r0.mp4", VideoSpec(frames=30, seed=40))
    url = postgres.database()
    Catalog(url).upgrade()
    env = {**os.environ, "ALLIANCE_HOME": str(tmp_path / ".alliance"), "ALLIANCE_CATALOG": url,
           "ALLIANCE_BEAM_WORKERS": "2"}
    args = worker("ingest", str(folder), "crash", "--direct_running_mode=in_memory")
    process, output = start(args, env)
    from alliance.models import Clip, Run

    catalog = Catalog(url)
    deadline = time.monotonic() + 120
    while True:  # the launcher recorded the run as running: the job is under way
        with catalog.session() as session:
            if session.get(Run, "crash") is not None:
                break
        assert process.poll() is None and time.monotonic() < deadline, output.text()
        time.sleep(0.1)
    catalog.dispose()
    postgres.stop()
    try:
        first = process.wait(120)
    finally:
        postgres.start()
    text = output.text()
    if first != 0:
        assert "alliance.errors.CatalogError: catalog postgresql" in text, text[-2000:]  # a clear error
        code, out, _ = run_to_end(args, env)
        assert code == 0, out
    catalog = Catalog(url)
    with catalog.session() as session:
        run = session.get(Run, "crash")
        clips = session.scalars(select(Clip)).all()
    catalog.dispose()
    from alliance.store import open_store

    table = read_table(open_store(settings=Settings(home=tmp_path / ".alliance")), "tables/clips/crash")
    assert run.status == "succeeded" and len(clips) == table.num_rows == 3
    assert len({c.id for c in clips}) == len(clips)
    record("fault_postgres_ingest", stops=1, first_attempt="finished" if first == 0 else "failed_then_resumed")

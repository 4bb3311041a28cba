"""Runs recorded one way (alliance.runs): running, then failed or succeeded, UTC-aware times, the config saved; only
`alliance catalog upgrade` migrates a server database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest
from sqlalchemy import event

from alliance.catalog import Catalog
from alliance.errors import CatalogError
from alliance.models import Run
from alliance.runs import FAILED, RUNNING, SUCCEEDED, record_run, recorded_run, utc
from alliance.settings import Settings
from alliance.store import open_store
from alliance.tables import CLIP_SCHEMA


def _run(catalog: Catalog, run_id: str) -> Run:
    with catalog.session() as session:
        return session.get(Run, run_id)


def _close_to_now(at: datetime) -> bool:
    now = datetime.now(timezone.utc)
    at = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)  # SQLite keeps no zone: it holds UTC
    return abs(now - at) < timedelta(minutes=1)


def test_a_run_is_running_with_its_config_then_succeeded_with_its_summary(catalog):
    with recorded_run(catalog.url, "r1", "ingest", {"source": "incoming/", "clip_s": 1.0, "scales": (1, 2)}) as run:
        row = _run(catalog, "r1")
        assert (row.kind, row.status, row.finished_at) == ("ingest", RUNNING, None)
        assert row.config == {"source": "incoming/", "clip_s": 1.0, "scales": [1, 2]}
        run.summary = {"clips_written": 3}
    row = _run(catalog, "r1")
    assert (row.status, row.summary, row.config["source"]) == (SUCCEEDED, {"clips_written": 3}, "incoming/")
    assert _close_to_now(row.started_at) and _close_to_now(row.finished_at)


def test_a_run_that_raises_is_recorded_failed_with_the_error_and_the_error_goes_on(catalog):
    with pytest.raises(ValueError, match="the store is gone"):
        with recorded_run(catalog.url, "r2", "curate", {"clips_run": "r1"}) as run:
            run.summary = {"clips_in": 4}
            raise ValueError("the store is gone")
    row = _run(catalog, "r2")
    assert row.status == FAILED and row.finished_at is not None
    assert row.summary == {"clips_in": 4, "error": "ValueError: the store is gone"}


def test_when_the_catalog_fails_too_the_run_raises_its_own_error(tmp_path, monkeypatch):
    import alliance.runs

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with pytest.raises(ValueError, match="decoder crashed"):
        with recorded_run(url, "r3", "ingest", {}):
            def down(*_args, **_kw):
                raise CatalogError("catalog postgresql://db: unreachable")

            monkeypatch.setattr(alliance.runs, "record_run", down)
            raise ValueError("decoder crashed")


def test_times_are_utc_whatever_zone_the_database_session_is_in(catalog_url):
    catalog = Catalog(catalog_url)
    if catalog.backend == "postgresql":  # a naive time would be read as Tokyo time: 9 hours off
        event.listen(catalog.engine, "connect", lambda connection, _: connection.execute("SET TIME ZONE 'Asia/Tokyo'"))
    try:
        catalog.prepare() if catalog.backend == "sqlite" else catalog.upgrade()
        record_run(catalog, "t1", "train", RUNNING, config={"steps": 10}, started_at=datetime.utcnow())
        record_run(catalog, "t1", "train", SUCCEEDED, summary={"steps": 10})
        row = _run(catalog, "t1")
        assert _close_to_now(row.started_at) and _close_to_now(row.finished_at)
        assert row.config == {"steps": 10}  # kept when a later call gives none
        if catalog.backend == "postgresql":
            assert row.started_at.tzinfo is not None
    finally:
        catalog.dispose()
    assert utc(datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))) == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_only_catalog_upgrade_migrates_a_server_database(postgres_url, tmp_path):
    sqlite = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    sqlite.prepare()  # the embedded catalog upgrades itself on first use
    assert sqlite.current_revision() == sqlite.head_revision()
    sqlite.dispose()
    server = Catalog(postgres_url)
    with pytest.raises(CatalogError, match="run `alliance catalog upgrade`"):
        server.prepare()
    with pytest.raises(CatalogError, match="run `alliance catalog upgrade`"):
        with recorded_run(postgres_url, "r", "ingest", {}):
            pytest.fail("the work must not start on a catalog behind the code")
    from pipelines.shard import run_shard

    with pytest.raises(CatalogError, match="run `alliance catalog upgrade`"):
        run_shard(Settings(home=tmp_path / "home", catalog_url=postgres_url), "ego", "sel-1", use_beam=False)
    from partners.config import ServiceConfig
    from partners.service import service_state

    with pytest.raises(CatalogError, match="run `alliance catalog upgrade`"):  # the delivery service does not start
        service_state(Settings(home=tmp_path / "home", catalog_url=postgres_url), ServiceConfig())
    assert server.current_revision() is None  # nothing was migrated behind the operator's back
    server.dispose()


def test_the_train_command_records_its_run_the_same_way(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from alliance.cli.train import _record_run

    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ALLIANCE_CATALOG", raising=False)
    summary = SimpleNamespace(run="train-1", finished=False, dataset="ego", version=3, steps=5, final_loss=0.5,
                              checkpoint_key="checkpoints/train-1/step-5.pt", collapse={"std_mean": 0.1})
    _record_run(summary, {"preset": "tiny_cpu"})  # stopped early (--stop-after): still running
    catalog = Catalog(Settings(home=tmp_path / "home").effective_catalog_url)
    first = _run(catalog, "train-1")
    assert (first.kind, first.status, first.finished_at, first.config) == ("train", RUNNING, None,
                                                                           {"preset": "tiny_cpu"})
    _record_run(SimpleNamespace(**{**vars(summary), "finished": True, "steps": 9}), {"preset": "tiny_cpu"})
    row = _run(catalog, "train-1")
    catalog.dispose()
    assert (row.status, row.summary["steps"], row.summary["dataset"]) == (SUCCEEDED, 9, "ego@v3")
    assert row.started_at == first.started_at and _close_to_now(row.finished_at)


def test_curate_records_a_run_that_fails(tmp_path, monkeypatch):
    import pipelines.curate as curate

    settings = Settings(home=tmp_path / "home")
    store = open_store(settings=settings)
    pq.write_table(CLIP_SCHEMA.empty_table(), tmp_path / "part.parquet")
    store.put_file("tables/clips/in-1/part-00000.parquet", tmp_path / "part.parquet")

    def broken(*_args, **_kw):
        raise RuntimeError("a worker image without PyAV")

    monkeypatch.setattr(curate, "build_pipeline", broken)
    with pytest.raises(RuntimeError, match="without PyAV"):
        curate.run_curate(settings, "in-1", "cur-1")
    catalog = Catalog(settings.effective_catalog_url)
    row = _run(catalog, "cur-1")
    catalog.dispose()
    assert (row.kind, row.status, row.config["clips_run"]) == ("curate", FAILED, "in-1")
    assert "without PyAV" in row.summary["error"] and row.finished_at is not None

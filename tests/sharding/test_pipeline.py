"""The shard pipeline on Beam (FnApiRunner and PortableRunner) and the `alliance datasets` commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from alliance.catalog import Catalog
from alliance.devservers import free_port, wait_for_port
from alliance.models import Delivery, Partner, Recording
from alliance.settings import RunnerSettings, Settings
from alliance.store import S3Store
from pipelines.shard import run_shard
from sharding.audit import verify_version
from sharding.plan import ShardConfig
from sharding.records import recorded_versions
from tests.sharding.helpers import make_selection, version_bytes, write_selection_table

CONFIG = ShardConfig(target_bytes=24_000, seed=2)


def settings_for(store, tmp_path) -> Settings:
    s3 = store.settings if isinstance(store, S3Store) else Settings().s3
    return Settings(home=tmp_path / ".alliance", store_url=store.url, s3=s3,
                    runner=RunnerSettings(direct_num_workers=2))


def revoke(settings: Settings, recording: str, partner: str) -> None:
    catalog = Catalog(settings.effective_catalog_url)
    catalog.upgrade()
    with catalog.session() as session:
        session.merge(Partner(id=partner, display_name=partner))
        session.flush()  # no ORM relationships: flush parents before children
        session.merge(Delivery(id=f"d-{partner}", partner_id=partner, contract_version="1"))
        session.flush()
        session.merge(Recording(id=recording, partner_id=partner, delivery_id=f"d-{partner}", key="landing/x",
                                bytes=1, media_type="video/mp4", status="revoked"))
    catalog.dispose()


@pytest.mark.slow
def test_beam_pipeline_writes_records_and_reruns(s3_store, tmp_path):
    """Two Beam worker processes write to the real S3 server (file:// runs through Beam in the CLI test)."""
    store = s3_store
    selection = make_selection(store, tmp_path / "media")
    write_selection_table(store, selection)
    settings = settings_for(store, tmp_path)
    summary = run_shard(settings, "ego", "sel-1", config=CONFIG)
    assert (summary.ref, summary.samples, summary.already_committed) == ("ego@v1", 12, False)
    assert summary.shards_written == summary.shards >= 3
    assert summary.manifest_key == "datasets/ego/v1/manifest.json"
    assert verify_version(store, "ego", 1).ok
    local = run_shard(settings, "ego", "sel-1", config=CONFIG, use_beam=False)
    assert local.version == 1 and local.already_committed and local.shards_written == 0
    catalog = Catalog(settings.effective_catalog_url)
    assert [(v.name, v.version, v.samples) for v in recorded_versions(catalog)] == [("ego", 1, 12)]

    # the same selection, sharded without Beam into another store, gives the same bytes
    from alliance.store import LocalStore

    other = LocalStore(tmp_path / "other")
    make_selection(other, tmp_path / "media2")
    write_selection_table(other, selection)
    run_shard(Settings(home=tmp_path / ".other", store_url=other.url), "ego", "sel-1", config=CONFIG,
              use_beam=False)
    assert version_bytes(other, "ego", 1) == version_bytes(store, "ego", 1)

    # revoked recordings are left out of new versions
    revoke(settings, selection.recordings["farmcam"][0], "farmcam")
    fresh = run_shard(settings, "ego", "sel-1", config=CONFIG, use_beam=False)
    assert (fresh.version, fresh.samples, fresh.revoked_skipped) == (2, 10, 2)


@pytest.mark.slow
def test_portable_runner_with_local_job_service(file_store, tmp_path):
    selection = make_selection(file_store, tmp_path / "media", recordings_per_partner=1)
    write_selection_table(file_store, selection)
    port, log = free_port(), tmp_path / "job_service.log"
    with log.open("wb") as out:
        service = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, service, 60, log, "Beam's local job service")
        settings = Settings(home=tmp_path / ".alliance", store_url=file_store.url)
        summary = run_shard(settings, "ego", "sel-1", ("--runner=PortableRunner", f"--job_endpoint=localhost:{port}",
                                                      "--environment_type=LOOPBACK"), config=CONFIG)
        assert summary.samples == 6 and summary.shards_written == summary.shards
        assert verify_version(file_store, "ego", 1).ok
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_datasets_commands(file_store, tmp_path, monkeypatch):
    from alliance.cli.main import app

    selection = make_selection(file_store, tmp_path / "media")
    write_selection_table(file_store, selection)
    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / ".alliance"))
    monkeypatch.setenv("ALLIANCE_STORE", file_store.url)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    out = run("pipeline", "shard", "--name", "ego", "--selection", "sel-1", "--target-mb", "0.03", "--",
              "--runner=FnApiRunner", "--direct_running_mode=in_memory")
    assert "ego@v1: 12 samples" in out and "glassco: 4 samples" in out
    assert "ego@v1" in run("datasets", "list")
    assert "12 samples" in run("datasets", "show", "ego")
    assert json.loads(run("datasets", "show", "ego@v1", "--json"))["samples"] == 12
    assert ": ok" in run("datasets", "verify", "ego@v1")
    file_store.put_bytes("checkpoints/r1/run.json", json.dumps(
        {"run": "r1", "dataset": "ego", "version": 1, "checkpoints": ["checkpoints/r1/step-5.pt"], "steps": 5,
         "started_at": "2026-01-01T00:00:00+00:00", "finished_at": None}).encode())
    out = run("datasets", "ledger", "ego@v1", "--out", str(tmp_path / "ledger"))
    assert "glassco" in out and "r1" in out and (tmp_path / "ledger" / "ego-v1-partners.parquet").exists()
    assert file_store.exists("ledgers/ego/v1/partners.parquet")

    revoke_settings = Settings(home=tmp_path / ".alliance", store_url=file_store.url)
    revoke(revoke_settings, selection.recordings["robofleet"][1], "robofleet")
    out = run("datasets", "redact", "ego@v1")
    assert "ego@v2: removed 2 samples" in out and "r1" in out and "checkpoints/r1/step-5.pt" in out
    assert file_store.exists("reports/redactions/ego/v2.json")
    out = run("datasets", "diff", "ego@v1", "ego@v2")
    assert "robofleet" in out and "-2" in out and "2 removed" in out
    assert "deleted 0 object(s)" in run("datasets", "gc", "--grace", "0")
    shard = json.loads(file_store.get_bytes("datasets/ego/v2/manifest.json"))["shards"][0]["key"]
    file_store.delete(shard)
    assert "shard_missing" in run("datasets", "verify", "ego@v2", code=1)

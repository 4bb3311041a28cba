"""Consent enforced (issue 18): shard by purpose, refuse training outside it, sweep expired and withdrawn recordings.

Each test runs twice: file:// with SQLite, and the real SeaweedFS with the real PostgreSQL 15 (the session servers)."""

from __future__ import annotations

import io
import json
from datetime import date

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.models import Delivery, Partner, Recording, Run
from alliance.settings import Settings
from alliance.store import LocalStore, S3Store
from pipelines.shard import run_shard
from sharding.audit import verify_version
from sharding.consent import PURPOSES, ConsentError, require_purpose
from sharding.errors import VersionWithdrawn
from sharding.ledger import ledger
from sharding.manifest import latest_version, load_manifest
from sharding.plan import ShardConfig, plan_samples, plan_version
from sharding.reader import ShardReader
from sharding.records import recorded_versions, revoked_recordings, withdraw_partner
from sharding.sweep import sweep
from sharding.versions import read_index, write_version
from tests.sharding.helpers import make_selection, set_consent, write_selection_table

CONFIG = ShardConfig(target_bytes=24_000, seed=3)
CLIP_H = 0.8 / 3600  # 8 frames at 10 fps
JAN, JUNE = date(2026, 1, 1), date(2026, 6, 1)


@pytest.fixture(params=["file+sqlite", "s3+postgresql"])
def backend(request, tmp_path):
    """(store, settings, catalog): file:// with SQLite, or SeaweedFS with PostgreSQL."""
    if request.param == "file+sqlite":
        store, url = LocalStore(tmp_path / "store"), f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        store, url = request.getfixturevalue("s3_store"), request.getfixturevalue("postgres_url")
    s3 = store.settings if isinstance(store, S3Store) else Settings().s3
    settings = Settings(home=tmp_path / ".alliance", store_url=store.url, s3=s3, catalog_url=url)
    catalog = Catalog(url)
    catalog.upgrade()
    yield store, settings, catalog
    catalog.dispose()


def add_recordings(catalog: Catalog, partner: str, recordings: list[str], status: str = "accepted") -> None:
    with catalog.session() as session:
        session.merge(Partner(id=partner, display_name=partner))
        session.flush()  # no ORM relationships: flush parents before children
        session.merge(Delivery(id=f"d-{partner}", partner_id=partner, contract_version="1"))
        session.flush()
        for recording in recordings:
            session.merge(Recording(id=recording, partner_id=partner, delivery_id=f"d-{partner}", key="landing/x",
                                    bytes=1, media_type="video/mp4", duration_s=0.8, status=status))


def small_selection(store, tmp_path):
    return make_selection(store, tmp_path / "media", recordings_per_partner=2, clips_per_recording=1, dropped=0)


def test_the_scope_vocabulary_is_the_contracts():
    from partners.contract import CONSENT_SCOPES

    assert PURPOSES == CONSENT_SCOPES


def test_shard_takes_only_clips_whose_consent_covers_the_purpose(backend, tmp_path):
    store, settings, catalog = backend
    selection = small_selection(store, tmp_path)
    glassco, robofleet, farmcam = (selection.recordings[p] for p in ("glassco", "robofleet", "farmcam"))
    set_consent(selection, robofleet[0], {"scope": ["evaluation"], "expires": "2030-01-01"})
    set_consent(selection, glassco[1], {"scope": ["pretraining"], "expires": "2026-03-01"})
    set_consent(selection, farmcam[0], None)  # a folder ingest: no contract, the operator's own data
    write_selection_table(store, selection)

    summary = run_shard(settings, "ego", "sel-1", config=CONFIG, use_beam=False, today=JUNE)
    assert (summary.ref, summary.samples, summary.purpose) == ("ego@v1", 4, "pretraining")
    assert summary.left_out == {"consent_expired": 1, "consent_scope": 1}
    held = set(read_index(store, "ego", 1).column("recording_id").to_pylist())
    assert held == {glassco[0], robofleet[1], farmcam[0], farmcam[1]}
    note = load_manifest(store, "ego", 1).source["consent"]
    assert (note["purpose"], note["no_contract_scope"], note["no_contract_samples"]) == ("pretraining", "any", 1)
    assert note["left_out"] == summary.left_out
    lines = [json.loads(line) for line in store.get_bytes(summary.rejections_key).decode().splitlines()]
    by_reason = {line["reason"]: line["detail"] for line in lines}
    assert robofleet[0] in by_reason["consent_scope"] and "evaluation does not include pretraining" in \
        by_reason["consent_scope"] and "robofleet" in by_reason["consent_scope"]
    assert glassco[1] in by_reason["consent_expired"] and "expired on 2026-03-01" in by_reason["consent_expired"]
    with catalog.session() as session:
        run = session.scalars(select(Run).where(Run.kind == "shard")).one()
        assert run.summary["rejections"] == summary.left_out and run.summary["purpose"] == "pretraining"
    assert require_purpose(store, "ego", 1, today=JUNE).ref == "ego@v1"

    evaluation = run_shard(settings, "ego", "sel-1", config=CONFIG, use_beam=False, today=JUNE,
                           purpose="evaluation")
    assert (evaluation.version, evaluation.samples) == (2, 2)  # robofleet's evaluation clip, farmcam's uncontracted one
    with pytest.raises(ConsentError, match="sharded for evaluation, not pretraining") as refused:
        require_purpose(store, "ego", 2, "pretraining", today=JUNE)
    assert "robofleet" in str(refused.value) and "farmcam" in str(refused.value)

    # a version written before purposes were recorded: its samples' own consent decides, named in the refusal
    write_version(store, "legacy", plan_version(plan_samples(selection.rows, store), CONFIG, {"selection": "sel-1"}))
    with pytest.raises(ConsentError) as refused:
        require_purpose(store, "legacy", 1, today=JUNE)
    message = str(refused.value)
    assert "glassco: " + glassco[1][:12] + " (consent expired on 2026-03-01)" in message
    assert "robofleet: " + robofleet[0][:12] + " (consent scope evaluation does not include pretraining)" in message
    reasons = [p.reason for p in verify_version(store, "legacy", 1, today=JUNE).problems]
    assert reasons == ["consent_expired"]  # no recorded purpose: the scope is not judged, expiry is
    assert verify_version(store, "ego", 1, today=JUNE).ok


def test_sweep_redacts_expired_and_withdrawn_once_and_the_ledger_shows_them(backend, tmp_path):
    store, settings, catalog = backend
    selection = small_selection(store, tmp_path)
    glassco, robofleet, farmcam = (selection.recordings[p] for p in ("glassco", "robofleet", "farmcam"))
    set_consent(selection, glassco[1], {"scope": ["pretraining"], "expires": "2026-03-01"})
    write_selection_table(store, selection)
    assert run_shard(settings, "ego", "sel-1", config=CONFIG, use_beam=False, today=JAN).samples == 6
    store.put_bytes("checkpoints/r1/run.json", json.dumps(
        {"run": "r1", "dataset": "ego", "version": 1, "checkpoints": ["checkpoints/r1/step-5.pt"], "steps": 5}).encode())
    add_recordings(catalog, "robofleet", [robofleet[0]], status="revoked")
    add_recordings(catalog, "farmcam", farmcam)

    revoked = revoked_recordings(catalog)
    problems = {(p.reason, p.key) for p in verify_version(store, "ego", 1, revoked=revoked, today=JUNE).problems}
    assert problems == {("consent_revoked", robofleet[0]), ("consent_expired", glassco[1])}

    dry = sweep(store, catalog, today=JUNE, dry_run=True)
    assert not dry.wrote and [(f.ref, f.successor) for f in dry.versions] == [("ego@v1", None)]
    assert latest_version(store, "ego") == 1
    in_january = sweep(store, catalog, today=JAN, dry_run=True)  # glassco's consent still held then
    assert {h.recording: h.reason for h in in_january.recordings} == {robofleet[0]: "consent_revoked"}
    first = sweep(store, catalog, today=JUNE)
    assert [(r.parent, r.version, r.removed_samples) for r in first.redactions] == [(1, 2, 2)]
    assert {h.recording: h.reason for h in first.recordings} == {robofleet[0]: "consent_revoked",
                                                                 glassco[1]: "consent_expired"}
    assert [(f.ref, f.successor) for f in first.versions] == [("ego@v1", 2)]
    assert [(r.run, r.version, r.checkpoints) for r in first.affected_runs] == [("r1", 1, ("checkpoints/r1/step-5.pt",))]
    assert [(v.name, v.version) for v in recorded_versions(catalog)] == [("ego", 1), ("ego", 2)]
    assert verify_version(store, "ego", 2, revoked=revoked, today=JUNE).ok
    with pytest.raises(ConsentError, match="redacted into ego@v2") as refused:
        require_purpose(store, "ego", 1)  # the withdrawn recording is named without asking the catalog
    assert "robofleet: " + robofleet[0][:12] in str(refused.value)
    assert require_purpose(store, "ego", 2, today=JUNE).ref == "ego@v2"

    before = sorted((o.key, o.size) for o in store.list(""))
    again = sweep(store, catalog, today=JUNE)
    assert not again.wrote and [(f.ref, f.successor) for f in again.versions] == [("ego@v1", 2)]
    assert sorted((o.key, o.size) for o in store.list("")) == before, "a second sweep writes nothing"

    # the partner leaves and takes its data: every recording revoked, then the sweep redacts the newest version
    assert withdraw_partner(catalog, "farmcam", "partner exit") == sorted(farmcam)
    assert withdraw_partner(catalog, "farmcam", "partner exit") == []
    third = sweep(store, catalog, today=JUNE, purge=True)
    assert [(r.parent, r.version, r.removed_samples) for r in third.redactions] == [(2, 3, 2)]
    assert sorted(third.purged) == ["ego@v1", "ego@v2"]
    with pytest.raises(VersionWithdrawn, match="read ego@v3"):
        ShardReader.open(store, "ego", 1)
    assert {s.meta["recording"] for s in ShardReader(store, "ego", 3, frames=2, size=16)} == {glassco[0],
                                                                                            robofleet[1]}
    assert not sweep(store, catalog, today=JUNE, purge=True).wrote
    assert latest_version(store, "ego") == 3

    book = ledger(store, "ego", 3, revoked=revoked_recordings(catalog), today=JUNE)
    figures = {p.partner: (p.clips, round(p.withdrawn_hours / CLIP_H), round(p.expired_hours / CLIP_H))
               for p in book.partners}
    assert figures == {"glassco": (1, 0, 1), "robofleet": (1, 1, 0), "farmcam": (0, 2, 0)}
    assert book.outside_consent_hours == 0
    assert ledger(store, "ego", 1, revoked=revoked_recordings(catalog), today=JUNE).outside_consent_hours == \
        pytest.approx(4 * CLIP_H)


def test_consent_commands(file_store, tmp_path, monkeypatch):
    """`pipeline shard --purpose`, `consent sweep`, `datasets verify|ledger`, `partners revoke --withdraw-data`,
    `status` and `train` refusing a version outside its consent."""
    from typer.testing import CliRunner

    from alliance.cli.main import app

    selection = small_selection(file_store, tmp_path)
    glassco, robofleet = selection.recordings["glassco"], selection.recordings["robofleet"]
    set_consent(selection, robofleet[0], {"scope": ["evaluation"], "expires": "2030-01-01"})
    set_consent(selection, glassco[1], {"scope": ["pretraining"], "expires": "2020-01-01"})
    for recording in selection.recordings["farmcam"]:
        set_consent(selection, recording, None)
    write_selection_table(file_store, selection)
    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / ".alliance"))
    monkeypatch.setenv("ALLIANCE_STORE", file_store.url)
    monkeypatch.delenv("ALLIANCE_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(app, list(args), catch_exceptions=code != 0)
        assert result.exit_code == code, result.output
        return result

    out = run("pipeline", "shard", "--name", "ego", "--selection", "sel-1", "--purpose", "evaluation", "--",
              "--runner=FnApiRunner", "--direct_running_mode=in_memory").output
    assert "ego@v1: 3 samples" in out and "left out consent_expired 1, consent_scope 2" in out
    assert "reports/shards/ego/v1/rejections.jsonl" in out
    refused = run("train", "--dataset", "ego@v1", code=1)
    assert isinstance(refused.exception, ConsentError) and "sharded for evaluation" in str(refused.exception)
    assert "pretraining" in run("consent", "check", "ego@v1", code=1).exception.args[0]

    write_version(file_store, "legacy", plan_version(plan_samples(selection.rows, file_store), CONFIG,
                                                     {"selection": "sel-1"}))
    verdict = run("datasets", "verify", "legacy@v1", code=1).output
    assert "consent_expired" in verdict and glassco[1] in verdict
    run("partners", "add", "robofleet")
    cat = Catalog(f"sqlite:///{tmp_path / '.alliance' / 'catalog.db'}")
    add_recordings(cat, "robofleet", robofleet)
    cat.dispose()
    out = run("partners", "revoke", "robofleet", "--withdraw-data").output
    assert "withdrew 2 recording(s)" in out
    out = run("consent", "sweep", "--dataset", "legacy").output
    assert "wrote legacy@v2 from v1: removed 3 sample(s)" in out and "robofleet" in out
    assert "nothing new written" in run("consent", "sweep", "--dataset", "legacy").output
    assert ": ok" in run("datasets", "verify", "legacy@v2").output
    out = run("datasets", "ledger", "legacy@v2").output
    assert "withdrawn h" in out and "expired h" in out
    partners = pq.read_table(io.BytesIO(file_store.get_bytes("ledgers/legacy/v2/partners.parquet"))).to_pylist()
    assert {p["partner"]: round(p["withdrawn_hours"] / CLIP_H) for p in partners}["robofleet"] == 2
    out = run("status").output
    assert "consent by partner" in out and "0.000 h (2)" in out

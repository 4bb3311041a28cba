"""Writing, verifying, reading, diffing and redacting dataset versions on file:// and the real SeaweedFS."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset

from alliance.store import LocalStore, S3Store
from sharding.audit import diff_versions, verify_version
from sharding.errors import DatasetError, VersionNotFound, VersionWithdrawn
from sharding.gc import gc
from sharding.layout import manifest_key, sample_key
from sharding.ledger import ledger, write_ledger
from sharding.manifest import latest_version, load_manifest
from sharding.plan import ShardConfig, plan_samples, plan_version
from sharding.reader import ShardReader
from sharding.redact import redact
from sharding.versions import read_index, write_version
from tests.sharding.helpers import kept_rows, make_selection, version_bytes

SMALL = ShardConfig(target_bytes=24_000, seed=7)


def build(store, rows, name="ego", config=SMALL, run="sel-1"):
    return write_version(store, name, plan_version(plan_samples(rows, store), config, {"selection": run}))


def test_write_verify_and_read_back(store, selection):
    manifest = build(store, selection.rows)
    kept = kept_rows(selection)
    assert manifest.ref == "ego@v1" and manifest.samples == len(kept) == 12
    assert len(manifest.shards) >= 3, "a small target size cuts several shards"
    assert manifest.partners["glassco"]["samples"] == 4 and manifest.hours == pytest.approx(12 * 0.8 / 3600, abs=1e-6)
    assert not any(o.key.split("/")[3].startswith("_work") for o in store.list("datasets/ego/v1/"))

    report = verify_version(store, "ego", 1, decode=True)
    assert report.ok, report.problems
    assert report.samples == 12 and report.bytes_read == manifest.bytes

    samples = list(ShardReader(store, "ego", 1, frames=4, size=32))
    assert sorted(s.meta["clip_id"] for s in samples) == sorted(r["clip_id"] for r in kept)
    for sample in samples:
        assert sample.frames.shape == (4, 32, 32, 3) and sample.frames.dtype == np.uint8
        assert sample.meta["consent"] == {"scope": ["pretraining", "research"], "expires": "2030-01-01"}
        assert sample.meta["license"] == "cc-by-4.0" and sample.meta["device"]["kind"] == "glasses"
        assert sample.meta["quality"]["luma_mean"] == 100.0 and sample.meta["cluster"] in (0, 1, 2)
        assert sample.meta["faces_allowed"] is False and sample.meta["t1"] > sample.meta["t0"]
        if sample.meta["partner"] == "farmcam":
            assert sample.sensors == {}
        else:
            assert sample.sensors["imu"].shape == (4, 6) and sample.sensors["imu"].dtype == np.float32
    # sensors are the stored rows at the returned frame indices
    row = next(r for r in kept if r["partner"] == "glassco")
    stored = np.load(__import__("io").BytesIO(store.get_bytes(json.loads(row["sensor_keys"])["imu"])))
    got = next(s for s in samples if s.meta["clip_id"] == row["clip_id"])
    np.testing.assert_array_equal(got.sensors["imu"], stored[got.meta["frame_indices"]])


def _wds_urls(store, manifest):
    if isinstance(store, S3Store):
        return [store.presign_get(key) for key in manifest.shard_keys]
    assert isinstance(store, LocalStore)
    return [str(store.root / key) for key in manifest.shard_keys]


def test_stock_webdataset_reads_the_shards(store, selection):
    manifest = build(store, selection.rows)
    # no Alliance code on the read path: plain file paths, or presigned HTTP URLs fetched by webdataset (curl)
    dataset = webdataset.WebDataset(_wds_urls(store, manifest), shardshuffle=False)
    seen = list(dataset)
    assert len(seen) == 12
    for sample in seen:
        assert sample["mp4"][4:8] == b"ftyp"
        meta = json.loads(sample["json"])
        assert sample["__key__"] == sample_key(meta["clip_id"])
        assert ("imu.npy" in sample) == (meta["partner"] != "farmcam")
    decoded = next(iter(webdataset.WebDataset(_wds_urls(store, manifest), shardshuffle=False).decode()))
    assert isinstance(decoded["json"], dict)


def test_same_selection_twice_is_byte_identical(store, selection, tmp_path):
    first = build(store, selection.rows)
    again = build(store, list(reversed(selection.rows)))  # input order does not matter
    assert again == first and latest_version(store, "ego") == 1, "a re-run writes nothing new"
    other = LocalStore(tmp_path / "other")
    make_selection(other, tmp_path / "media2")
    build(other, selection.rows)
    assert version_bytes(other, "ego", 1) == version_bytes(store, "ego", 1)


def test_seeded_shuffle_mixes_partners(store, selection):
    manifest = build(store, selection.rows, config=ShardConfig(target_bytes=1 << 30, max_samples=6, seed=1))
    index = read_index(store, "ego", 1).to_pylist()
    by_shard = {}
    for row in index:
        by_shard.setdefault(row["shard"], set()).add(row["partner"])
    assert [e.samples for e in manifest.shards] == [6, 6]
    assert all(len(partners) >= 2 for partners in by_shard.values())


def test_version_without_manifest_is_invisible(store, selection):
    build(store, selection.rows)
    store.delete(manifest_key("ego", 1))
    with pytest.raises(VersionNotFound, match="ego@v1 does not exist"):
        ShardReader.open(store, "ego", 1)
    assert latest_version(store, "ego") is None
    report = gc(store, grace_s=0)
    assert report.deleted and not list(store.list("datasets/"))


def test_gc_keeps_committed_and_fresh_claims(store, selection):
    build(store, selection.rows)
    before = {o.key for o in store.list("datasets/")}
    fewer = [r for r in selection.rows if r["partner"] != "farmcam"]
    plan = plan_version(plan_samples(fewer, store), SMALL, {"selection": "sel-2"})
    from sharding.versions import claim_version, write_planned_shard

    claim = claim_version(store, "ego", plan.sha256)
    write_planned_shard(store, "ego", claim.version, plan.shards[0])  # then the writer "crashes"
    assert gc(store).deleted == (), "a claim younger than the grace period may still be running"
    with pytest.raises(DatasetError, match="claimed by an unfinished write"):
        build(store, selection.rows[:3])
    report = gc(store, grace_s=0)
    assert report.deleted and {o.key for o in store.list("datasets/")} == before
    assert verify_version(store, "ego", 1).ok


def test_diff_by_partner(store, selection):
    build(store, selection.rows)
    fewer = [r for r in selection.rows if not (r["partner"] == "robofleet" and r["t0"] > 0)]
    build(store, fewer, run="sel-2")
    diff = diff_versions(store, ("ego", 1), ("ego", 2))
    assert diff.removed == {"robofleet": 2} and diff.added == {} and diff.unchanged == 10


def test_redact_removes_exactly_the_revoked_samples(store, selection):
    v1 = build(store, selection.rows)
    revoked = selection.recordings["robofleet"][0]
    store.put_bytes("checkpoints/run-a/run.json", json.dumps(
        {"run": "run-a", "dataset": "ego", "version": 1, "config": {}, "checkpoints": ["checkpoints/run-a/step-10.pt"],
         "started_at": "2026-01-01T00:00:00+00:00", "finished_at": None, "steps": 10}).encode())
    store.put_bytes("checkpoints/run-b/run.json", json.dumps(
        {"run": "run-b", "dataset": "other", "version": 1, "checkpoints": [], "steps": 3}).encode())
    # runs that started from an encoder (objective.encoder_from): run-c from run-a's checkpoint, run-d from run-c
    # (two hops), run-e from run-b, which never read ego
    for run, source in (("run-c", "checkpoints/run-a/step-10.pt"), ("run-d", "run-c"), ("run-e", "run-b")):
        store.put_bytes(f"checkpoints/{run}/run.json", json.dumps(
            {"run": run, "dataset": "synthetic", "version": 0, "config": {"objective": {"encoder_from": source}},
             "checkpoints": [f"checkpoints/{run}/step-4.pt"], "steps": 4}).encode())
    report = redact(store, "ego", 1, {revoked, "not-in-this-dataset"})
    assert report.version == 2 and report.removed_samples == 2 and report.removed_by_partner == {"robofleet": 2}
    assert [(r.run, r.via) for r in report.affected_runs] == [("run-a", ""), ("run-c", "run-a"), ("run-d", "run-c")]
    assert report.affected_runs[0].checkpoints == ("checkpoints/run-a/step-10.pt",)
    assert {(r.dataset, r.version) for r in report.affected_runs} == {("ego", 1)}  # the version at the root

    v2 = load_manifest(store, "ego", 2)
    before = {r["clip_id"]: r for r in read_index(store, "ego", 1).to_pylist()}
    after = {r["clip_id"]: r for r in read_index(store, "ego", 2).to_pylist()}
    assert set(before) - set(after) == {c for c, r in before.items() if r["recording_id"] == revoked}
    assert v2.parent == 1 and v2.samples == v1.samples - 2
    touched = {before[c]["shard_key"] for c in set(before) - set(after)}
    assert set(report.rewritten_shards) == {k for k in v2.shard_keys if k.startswith("datasets/ego/v2/")}
    assert len(report.rewritten_shards) == len(touched) - report.dropped_shards
    assert report.reused_shards == len(v1.shards) - len(touched), "untouched shards are reused, not rewritten"
    assert set(v1.shard_keys) - touched <= set(v2.shard_keys)
    assert verify_version(store, "ego", 2).ok
    keys = {s.meta["recording"] for s in ShardReader(store, "ego", 2, frames=2, size=16)}
    assert revoked not in keys and len(keys) == 5

    again = redact(store, "ego", 1, {revoked})
    assert again.version == 2 and latest_version(store, "ego") == 2, "redaction is idempotent"
    assert redact(store, "ego", 2, {revoked}).version is None, "nothing left to remove"


def test_redact_with_purge_withdraws_the_parent(store, selection):
    build(store, selection.rows)
    revoked = selection.recordings["glassco"][1]
    report = redact(store, "ego", 1, {revoked}, purge=True)
    assert report.purged_shards and all(not store.exists(k) for k in report.purged_shards)
    with pytest.raises(VersionWithdrawn, match="read ego@v2"):
        ShardReader.open(store, "ego", 1)
    assert sum(1 for _ in ShardReader(store, "ego", 2, frames=2, size=16)) == 10
    assert gc(store, grace_s=0).deleted == ()
    assert verify_version(store, "ego", 2).ok


def test_ledger_credits_partners_and_lists_runs(store, selection):
    build(store, selection.rows)
    store.put_bytes("checkpoints/r1/run.json", json.dumps(
        {"run": "r1", "dataset": "ego", "version": 1, "checkpoints": ["a", "b"], "steps": 20,
         "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T01:00:00+00:00"}).encode())
    book = ledger(store, "ego", 1)
    assert [(p.partner, p.clips, p.recordings) for p in book.partners] == [
        ("farmcam", 4, 2), ("glassco", 4, 2), ("robofleet", 4, 2)]
    assert sum(p.share_of_hours for p in book.partners) == pytest.approx(1.0, abs=1e-5)
    assert [(r.run, r.version, r.checkpoints, r.used_this_version) for r in book.runs] == [("r1", 1, 2, True)]
    partners_key, runs_key = write_ledger(store, book)
    import io

    import pyarrow.parquet as pq
    assert pq.read_table(io.BytesIO(store.get_bytes(partners_key))).num_rows == 3
    assert pq.read_table(io.BytesIO(store.get_bytes(runs_key))).num_rows == 1


def test_verify_finds_a_damaged_shard(file_store, tmp_path):
    selection = make_selection(file_store, tmp_path / "media")
    manifest = build(file_store, selection.rows)
    path = file_store.root / manifest.shards[1].key
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))
    file_store.delete(manifest.shards[2].key)
    report = verify_version(file_store, "ego", 1)
    reasons = {(p.key, p.reason) for p in report.problems}
    assert (manifest.shards[1].key, "shard_sha256_mismatch") in reasons
    assert (manifest.shards[2].key, "shard_missing") in reasons
    assert all("rebuild" in p.detail for p in report.problems if p.stage == "verify")


def test_nothing_kept_is_refused(store, selection):
    with pytest.raises(DatasetError, match="keeps no clips"):
        plan_version(plan_samples([{**r, "kept": False} for r in selection.rows], store), SMALL, {"selection": "x"})

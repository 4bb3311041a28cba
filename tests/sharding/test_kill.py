"""kill -9 of a running shard writer at several points, then a re-run: the same version as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alliance.catalog import Catalog
from alliance.settings import Settings
from alliance.store import LocalStore, ObjectStore, S3Store
from pipelines.shard import run_shard
from sharding.audit import verify_version
from sharding.gc import gc
from sharding.plan import ShardConfig
from sharding.records import recorded_versions
from tests.sharding.helpers import make_selection, version_bytes, write_selection_table

ROOT = Path(__file__).resolve().parents[2]
TARGET = 24_000


def writer_env(store: ObjectStore, home: Path) -> dict[str, str]:
    env = {**os.environ, "ALLIANCE_HOME": str(home), "ALLIANCE_STORE": store.url, "PYTHONPATH": str(ROOT)}
    if isinstance(store, S3Store):
        env.update(ALLIANCE_S3_ENDPOINT=store.settings.endpoint_url,
                   ALLIANCE_S3_ACCESS_KEY_ID=store.settings.access_key_id,
                   ALLIANCE_S3_SECRET_ACCESS_KEY=store.settings.secret_access_key)
    return env


def start_writer(store: ObjectStore, home: Path, delay: float, target: int = TARGET) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.sharding.writer_proc", "ego", "sel-1", str(delay),
                             str(target)], cwd=ROOT, env=writer_env(store, home), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_when(process: subprocess.Popen, store: ObjectStore, key: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not store.exists(key):
        if process.poll() is not None:
            pytest.fail(f"the writer ended before {key} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{key} did not appear within {timeout_s}s")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture
def reference(tmp_path) -> dict[str, bytes]:
    """The version an uninterrupted run writes, in a store of its own."""
    store = LocalStore(tmp_path / "reference")
    write_selection_table(store, make_selection(store, tmp_path / "ref-media"))
    run_shard(Settings(home=tmp_path / ".ref", store_url=store.url), "ego", "sel-1",
              config=ShardConfig(target_bytes=TARGET, seed=4), use_beam=False)
    return version_bytes(store, "ego", 1)


@pytest.mark.slow
@pytest.mark.parametrize("where,point", [
    ("file", "datasets/ego/v1/shard-000001.tar"),  # while writing shards
    ("file", "datasets/ego/v1/index.parquet"),  # every shard written, no manifest yet
    ("file", "datasets/ego/v1/manifest.json"),  # committed, not yet cleaned up nor recorded in the catalog
    ("s3", "datasets/ego/v1/shard-000002.tar"),
])
def test_kill_then_rerun_gives_the_uninterrupted_version(request, tmp_path, reference, where, point):
    store = LocalStore(tmp_path / "store") if where == "file" else request.getfixturevalue("s3_store")
    write_selection_table(store, make_selection(store, tmp_path / "media"))
    home = tmp_path / ".alliance"
    kill_when(start_writer(store, home, delay=0.15), store, point)
    if point != "datasets/ego/v1/manifest.json":
        assert not store.exists("datasets/ego/v1/manifest.json"), "killed before commit: the version is invisible"
    rerun = start_writer(store, home, delay=0)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "done ego@v1 12" in out, out
    assert version_bytes(store, "ego", 1) == reference
    assert not store.exists("datasets/ego/v2/manifest.json")
    assert verify_version(store, "ego", 1).ok
    catalog = Catalog(Settings(home=home).effective_catalog_url)
    assert [(v.name, v.version) for v in recorded_versions(catalog)] == [("ego", 1)]
    catalog.dispose()
    assert gc(store, grace_s=0).deleted == ()


@pytest.mark.slow
def test_kill_during_multipart_upload_leaves_only_orphans_gc_removes(s3_store, tmp_path):
    """A shard bigger than one S3 part, killed while its parts upload: the re-run completes; gc aborts the upload."""
    selection = make_selection(s3_store, tmp_path / "media", recordings_per_partner=1, clips_per_recording=1,
                               dropped=0)
    big = selection.rows[0]["clip_key"]
    s3_store.put_bytes(big, s3_store.get_bytes(big) + os.urandom(12 << 20))  # a 12 MB member: 2 parts of 8 MB
    write_selection_table(s3_store, selection)
    home = tmp_path / ".alliance"
    process = start_writer(s3_store, home, delay=0.5, target=1 << 30)
    full = f"{s3_store.prefix}/datasets/"
    deadline = time.monotonic() + 60
    while not s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket, Prefix=full).get("Uploads"):
        assert process.poll() is None and time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not s3_store.exists("datasets/ego/v1/shard-000000.tar"), "an unfinished upload is not an object"
    rerun = start_writer(s3_store, home, delay=0, target=1 << 30)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert verify_version(s3_store, "ego", 1).ok and s3_store.size("datasets/ego/v1/shard-000000.tar") > 12 << 20
    report = gc(s3_store, grace_s=0)
    assert report.aborted_uploads >= 1 and report.deleted == ()
    assert not s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket, Prefix=full).get("Uploads")


@pytest.mark.slow
def test_kill_the_beam_pipeline_command_then_rerun(tmp_path, reference):
    """`alliance pipeline shard` (Beam, 2 worker processes) killed with its workers as soon as a shard lands."""
    store = LocalStore(tmp_path / "store")
    write_selection_table(store, make_selection(store, tmp_path / "media"))
    env = {**writer_env(store, tmp_path / ".alliance"), "ALLIANCE_BEAM_WORKERS": "2"}
    command = [sys.executable, "-m", "alliance.cli.main", "pipeline", "shard", "--name", "ego", "--selection", "sel-1",
               "--target-mb", str(TARGET / 2**20), "--seed", "4"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(o.key.endswith(".tar") for o in store.list("datasets/ego/v1/")):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and its Beam workers, like a lost machine
    process.wait(timeout=30)
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "ego@v1: 12 samples" in rerun.stdout, rerun.stdout + rerun.stderr
    assert version_bytes(store, "ego", 1) == reference

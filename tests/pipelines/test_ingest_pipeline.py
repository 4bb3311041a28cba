"""The ingest pipeline end to end: local multi-processing runner, PortableRunner (LOOPBACK), catalog and folders."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from alliance.catalog import Catalog
from alliance.models import Clip, Delivery, Partner, Recording, Run
from alliance.settings import RunnerSettings, Settings
from alliance.store import open_store
from alliance.tables import CLIP_SCHEMA, REJECTION_SCHEMA
from ingest.clips import ClipConfig, sha256_file
from ingest.synth import ImuSpec, VideoSpec, imu_signal, imu_table, read_counter, write_bad_inputs, write_imu_csv, \
    write_video
from pipelines.ingest import run_ingest
from pipelines.sinks import ProgressWriter, part_of, read_progress, read_table, table_bytes
from tests.conftest import s3_settings

CONFIG = ClipConfig(clip_s=1.0)
EXPECTED_REFUSALS = {"empty.mp4": "empty_file", "truncated_5.mp4": "truncated", "truncated_50.mp4": "truncated",
                     "garbage.mp4": "not_video", "png_as_mp4.mp4": "not_video", "hls_playlist.mp4": "not_video",
                     "corrupt_moov.mp4": "corrupt", "audio_as_mp4.mp4": "no_video_stream"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two good recordings (one with an IMU beside it), one that breaks half-way, and every bad input."""
    root = tmp_path_factory.mktemp("deliveries")
    walk = write_video(root / "walk.mp4", VideoSpec(frames=30, scene="head_motion"))
    write_imu_csv(root / "walk.imu.csv", imu_table(ImuSpec(seconds=3.5)))
    write_video(root / "counter.mp4", VideoSpec(frames=25, scene="counter"))
    broken = write_video(root / "broken.mp4", VideoSpec(frames=80, scene="pan"))
    data = bytearray(broken.read_bytes())
    mdat = data.find(b"mdat")
    size = int.from_bytes(data[mdat - 4:mdat], "big")
    start = mdat + 4 + size // 2
    data[start:start + size // 3] = np.random.default_rng(1).integers(0, 256, size // 3, dtype=np.uint8).tobytes()
    broken.write_bytes(bytes(data))
    write_bad_inputs(root / "bad", walk)
    return root


def local_settings(tmp_path: Path, **kw) -> Settings:
    return Settings(home=tmp_path / "home", runner=RunnerSettings(direct_num_workers=2), **kw)


def clip_frames(store, key: str) -> list[np.ndarray]:
    local = Path(f"/tmp/{uuid.uuid4().hex}.mp4")
    local.write_bytes(store.get_bytes(key))
    try:
        with av.open(str(local)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    finally:
        local.unlink()


def test_folder_ingest_on_the_local_runner_then_a_rerun_writes_nothing_new(tmp_path, folder):
    settings = local_settings(tmp_path)
    seen = []
    summary = run_ingest(settings, str(folder), "run-a", partner="lab", config=CONFIG,
                         on_progress=lambda counts, n: seen.append((dict(counts), n)))
    store = open_store(settings=settings)
    clips = read_table(store, summary.clip_table_prefix)
    assert clips.schema.equals(CLIP_SCHEMA)
    rows = {(Path(json.loads(r["recording_meta"])["source"]).name, r["t0"]): r for r in clips.to_pylist()}
    assert sorted(k for k in rows if k[0] == "walk.mp4") == [("walk.mp4", 0.0), ("walk.mp4", 1.0), ("walk.mp4", 2.0)]
    assert sorted(k for k in rows if k[0] == "counter.mp4") == [("counter.mp4", 0.0), ("counter.mp4", 1.0)]
    broken = sorted(t0 for name, t0 in rows if name == "broken.mp4")
    assert broken[:3] == [0.0, 1.0, 2.0] and len(broken) < 8  # good clips before the damage are kept
    # frame-exact: the second counter clip shows source frames 10..19
    counter = rows[("counter.mp4", 1.0)]
    assert [read_counter(f) for f in clip_frames(store, counter["clip_key"])] == list(range(10, 20))
    assert counter["clip_id"] == f"{sha256_file(folder / 'counter.mp4')}-000001000-{CONFIG.fingerprint}"
    assert counter["clip_key"] == f"clips/lab/{counter['recording_id']}/{counter['clip_id']}.mp4"
    # IMU from the sidecar, aligned to the frame times
    walk = rows[("walk.mp4", 1.0)]
    assert walk["sensor_status"] == "ok" and rows[("counter.mp4", 0.0)]["sensor_status"] == "none"
    imu = np.load(__import__("io").BytesIO(store.get_bytes(json.loads(walk["sensor_keys"])["imu"])))
    np.testing.assert_allclose(imu, imu_signal(1.0 + np.arange(10) / 10, ImuSpec()), atol=2e-3)
    # every bad input refused with its reason, naming the file
    rejections = read_table(store, summary.rejection_table_prefix).to_pylist()
    by_file = {Path(r["key"]).name: r for r in rejections if r["stage"] == "decode" and "/" in r["key"]}
    assert {name: by_file[name]["reason"] for name in EXPECTED_REFUSALS} == EXPECTED_REFUSALS
    assert all(name in by_file[name]["detail"] for name in EXPECTED_REFUSALS)
    damaged = [r for r in rejections if r["key"].startswith(sha256_file(folder / "broken.mp4"))]
    assert damaged and {r["reason"] for r in damaged} <= {"decode_failed", "corrupt_frames"}
    assert summary.clips_written == clips.num_rows and summary.recordings_in == 11
    assert summary.rejections["not_video"] == 3
    assert sum(summary.rejections.get(r, 0) for r in ("decode_failed", "corrupt_frames")) == len(damaged)
    assert summary.accounted and summary.recordings_with_clips == 3
    assert summary.recordings_refused == {r: list(EXPECTED_REFUSALS.values()).count(r)
                                          for r in set(EXPECTED_REFUSALS.values())}
    assert store.exists(f"{summary.rejection_table_prefix}/rejections.jsonl")
    assert seen and seen[-1][0].get("clips_out") == clips.num_rows and seen[-1][1] == 11
    assert seen[-1][0]["recordings_done"] == 11 and seen[-1][0]["windows_done"] == seen[-1][0]["windows_planned"]
    # the launcher recorded the run, the recordings and the clips
    catalog = Catalog(settings.effective_catalog_url)
    with catalog.session() as session:
        run = session.get(Run, "run-a")
        assert (run.kind, run.status, run.summary["clips_written"]) == ("ingest", "succeeded", clips.num_rows)
        assert session.query(Clip).filter_by(run_id="run-a").count() == clips.num_rows
        assert session.get(Recording, counter["recording_id"]).key == str(folder / "counter.mp4")
        assert session.get(Partner, "lab") is not None
    catalog.dispose()

    # a re-run (here through the command line) finds every clip already there: same ids, nothing new written
    before = {o.key: o.size for o in store.list("clips/")}
    mtimes = {key: (store.root / key).stat().st_mtime_ns for key in before}
    from alliance.cli.main import main

    env = {"ALLIANCE_HOME": str(tmp_path / "home"), "ALLIANCE_BEAM_WORKERS": "2"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        main(["pipeline", "ingest", "--source", str(folder), "--run", "run-b", "--partner", "lab", "--clip-s", "1",
              "--", "--direct_num_workers=2"])  # a failure would exit 1
    again = read_table(store, "tables/clips/run-b")
    assert sorted(again.column("clip_id").to_pylist()) == sorted(clips.column("clip_id").to_pylist())
    assert {o.key: o.size for o in store.list("clips/")} == before
    assert {key: (store.root / key).stat().st_mtime_ns for key in before} == mtimes


@pytest.fixture(scope="module")
def job_service():
    """Beam's own local job service, the endpoint a Flink/Spark/Dataflow job server would be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Beam job service did not start (exit {process.poll()})")
            time.sleep(0.2)
    yield f"localhost:{port}"
    process.terminate()
    process.wait(10)


def test_the_same_pipeline_runs_on_portable_runner_with_loopback(tmp_path, folder, job_service):
    settings = local_settings(tmp_path)
    flags = ("--runner=PortableRunner", f"--job_endpoint={job_service}", "--environment_type=LOOPBACK")
    summary = run_ingest(settings, str(folder), "portable", flags, partner="lab", config=CONFIG)
    local = run_ingest(settings, str(folder), "local", partner="lab", config=CONFIG)
    store = open_store(settings=settings)
    ids = sorted(read_table(store, summary.clip_table_prefix).column("clip_id").to_pylist())
    assert ids == sorted(read_table(store, local.clip_table_prefix).column("clip_id").to_pylist()) and len(ids) >= 8
    assert summary.rejections == local.rejections
    assert local.clip_files_new == 0  # the portable run already wrote every clip


def test_catalog_source_on_s3_reads_the_manifest_and_its_sensors(tmp_path, seaweed):
    prefix = f"s3://alliance/t-{uuid.uuid4().hex[:12]}"
    settings = local_settings(tmp_path, store_url=prefix, s3=s3_settings(seaweed))
    store = open_store(settings=settings)
    store.ensure_bucket()
    video = write_video(tmp_path / "v.mp4", VideoSpec(frames=20, scene="head_motion"))
    imu = write_imu_csv(tmp_path / "imu.csv", imu_table(ImuSpec(seconds=3.0, t0=0.5)))
    base = "landing/glassco/d-001"
    store.put_file(f"{base}/files/rec/v.mp4", video)
    store.put_file(f"{base}/files/rec/imu.csv", imu)
    sha = sha256_file(video)
    manifest = {"partner": "glassco", "delivery": "d-001", "license": "CC-BY-4.0",
                "consent": {"scope": ["pretraining"], "expires": "2030-01-01", "faces_allowed": True},
                "recordings": [{"path": "rec/v.mp4", "sha256": sha, "bytes": video.stat().st_size,
                                "media_type": "video/mp4", "start_time": "2026-01-01T00:00:00Z",
                                "device": {"kind": "glasses", "model": "G1", "mounting": "head"},
                                "sensors": [{"stream": "imu", "path": "rec/imu.csv", "format": "csv",
                                             "columns": ["t", "ax", "ay", "az", "gx", "gy", "gz"],
                                             "units": {"gx": "rad/s"}, "rate_hz": 200, "clock_offset_s": -0.5}]}]}
    store.put_bytes(f"{base}/manifest.json", json.dumps(manifest).encode())
    catalog = Catalog(settings.effective_catalog_url)
    catalog.upgrade()
    with catalog.session() as session:
        session.add(Partner(id="glassco", display_name="GlassCo"))
        session.flush()
        session.add(Delivery(id="glassco-d-001", partner_id="glassco", status="accepted", contract_version="1.0"))
        session.flush()
        session.add(Recording(id=sha, partner_id="glassco", delivery_id="glassco-d-001",
                              key=f"{base}/files/rec/v.mp4", bytes=video.stat().st_size, media_type="video/mp4"))
    summary = run_ingest(settings, "catalog", "from-catalog", config=ClipConfig(clip_s=1.0, window_timeout_s=60))
    rows = read_table(store, summary.clip_table_prefix).to_pylist()
    assert [r["t0"] for r in sorted(rows, key=lambda r: r["t0"])] == [0.0, 1.0]
    assert {r["partner"] for r in rows} == {"glassco"} and {r["delivery"] for r in rows} == {"d-001"}
    meta = json.loads(rows[0]["recording_meta"])
    assert meta["license"] == "CC-BY-4.0" and meta["faces_allowed"] is True and meta["device"]["kind"] == "glasses"
    first = min(rows, key=lambda r: r["t0"])
    values = np.load(__import__("io").BytesIO(store.get_bytes(json.loads(first["sensor_keys"])["imu"])))
    # sensor time s is video time s - 0.5: the sine started at sensor time 0.5, so video time 0
    np.testing.assert_allclose(values, imu_signal(np.arange(10) / 10 + 0.5, ImuSpec()), atol=2e-3)
    with catalog.session() as session:
        assert session.query(Clip).filter_by(run_id="from-catalog").count() == 2
    catalog.dispose()


def test_a_hang_becomes_decode_timeout_and_a_store_prefix_is_a_source(tmp_path, folder):
    settings = local_settings(tmp_path)
    store = open_store(settings=settings)
    store.put_file("incoming/cam/counter.mp4", folder / "counter.mp4")
    summary = run_ingest(settings, "incoming/cam/", "timeouts", partner="cam",
                         config=ClipConfig(clip_s=1.0, window_timeout_s=0.0001), record=False)
    assert summary.clips_written == 0 and summary.rejections == {"decode_timeout": 2}
    rejections = read_table(store, summary.rejection_table_prefix, REJECTION_SCHEMA).to_pylist()
    assert all("incoming/cam/counter.mp4" in r["detail"] for r in rejections)
    assert read_table(store, summary.clip_table_prefix).schema.equals(CLIP_SCHEMA)  # an empty part with the schema


def test_parts_and_progress_are_deterministic_and_runner_independent(tmp_path):
    store = open_store(settings=Settings(home=tmp_path / "home"))
    rows = [{"key": f"k{i}", "stage": "decode", "reason": "corrupt", "detail": "x"} for i in range(5)]
    assert table_bytes(rows, REJECTION_SCHEMA, "key") == table_bytes(rows[::-1], REJECTION_SCHEMA, "key")
    assert [part_of(f"k{i}", 4) for i in range(5)] == [part_of(f"k{i}", 4) for i in range(5)]
    writer = ProgressWriter(store, "p", every_s=3600)
    writer.add(clips_out=2)
    writer.add(clips_out=3, rejected_corrupt=1)
    assert read_progress(store, "p") == {}
    writer.flush()
    assert read_progress(store, "p") == {"clips_out": 5, "rejected_corrupt": 1}
    assert isinstance(read_table(store, "nothing", REJECTION_SCHEMA), pa.Table)

"""`alliance pipeline curate` end to end on PyAV-made clips from two partners: selection, rejections, index, report."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alliance.settings import Settings
from alliance.store import open_store
from alliance.tables import REJECTION_SCHEMA, SELECTION_SCHEMA
from curation.embed import write_tiny_encoder
from curation.evalset import blur, camera_frames, encode, remux, scale_brightness
from curation.index_store import read_manifest
from curation.quality import parse_overrides
from curation.select import CurateConfig
from curation.semdedup import SemDedupConfig
from pipelines.curate import run_curate
from tests.curation.conftest import clip_row, encode_like_ingest, gaussian_blur, real_frames, write_clip_table

BEAM = ("--direct_num_workers=2",)  # the default runner: FnApiRunner, multi_processing
QUICK = ("--direct_running_mode=in_memory", "--direct_num_workers=1")  # same runner, one process: faster for the pure-logic checks


def _table(store, prefix):
    tables = [pq.read_table(io.BytesIO(store.get_bytes(o.key))) for o in store.list(prefix) if o.key.endswith(".parquet")]
    return tables


def make_deliveries(store):
    """Partner A delivers first; partner B later re-delivers some of A's scenes, mirrored or remuxed."""
    src = {i: camera_frames(200 + i, 40) for i in range(4)}
    a = [clip_row(store, "glasses-a", "d1", f"src{i}", encode(src[i]), accepted_at="2026-01-01T00:00:00")
         for i in range(3)]
    a += [
        clip_row(store, "glasses-a", "d1", "blurred", encode(blur(src[3], 5)), accepted_at="2026-01-01T00:00:00"),
        clip_row(store, "glasses-a", "d1", "dark", encode(scale_brightness(src[3], 0.08)),
                 accepted_at="2026-01-01T00:00:00"),
        clip_row(store, "glasses-a", "d1", "frozen", encode([src[3][0]] * 40), accepted_at="2026-01-01T00:00:00"),
        clip_row(store, "glasses-a", "d1", "shaky-imu", encode(src[3]), gyro=5.0, accel=9.0,
                 accepted_at="2026-01-01T00:00:00"),
        clip_row(store, "glasses-a", "d1", "handheld-imu", encode(camera_frames(300, 40, handheld=4, shake=2)),
                 gyro=1.3, accel=2.0, accepted_at="2026-01-01T00:00:00"),
    ]
    b = [
        clip_row(store, "robot-b", "d7", "src0-mirror", encode([f[:, ::-1].copy() for f in src[0]]),
                 accepted_at="2026-02-01T00:00:00"),
        clip_row(store, "robot-b", "d7", "src1-mkv", remux(encode(src[1])), accepted_at="2026-02-01T00:00:00"),
        clip_row(store, "robot-b", "d7", "src3", encode(src[3]), accepted_at="2026-02-01T00:00:00"),
        clip_row(store, "robot-b", "d7", "garbage", b"\x00not a video" * 50, accepted_at="2026-02-01T00:00:00"),
        clip_row(store, "robot-b", "d7", "ingest-refused", b"", status="too_short",
                 accepted_at="2026-02-01T00:00:00"),
    ]
    return a, b


def _by_name(table):
    return {json.loads(r["recording_meta"])["name"]: r for r in table.to_pylist()}


@pytest.mark.slow
def test_curate_without_encoder_two_partners_in_two_runs(tmp_path):
    settings = Settings(home=tmp_path / ".alliance")
    store = open_store(settings=settings)
    a, b = make_deliveries(store)
    write_clip_table(store, "ingest-a", a)
    write_clip_table(store, "ingest-b", b)

    first = run_curate(settings, "ingest-a", "cur-a", beam_flags=BEAM)
    assert (first.clips_in, first.kept) == (8, 4)
    assert first.dropped == {"quality": {"blurry": 1, "too_dark": 1, "frozen": 1, "violent_shake": 1}}
    assert "skipped" in first.semantic

    second = run_curate(settings, "ingest-b", "cur-b", beam_flags=QUICK)
    tables = _table(store, "tables/selections/cur-b/")
    assert all(t.schema.equals(SELECTION_SCHEMA) for t in tables)
    rows = _by_name(pa.concat_tables(tables))
    a_ids = {json.loads(r["recording_meta"])["name"]: r["clip_id"] for r in a}
    assert rows["src3"]["kept"] and rows["src3"]["cluster"] == -1
    assert (rows["src0-mirror"]["drop_stage"], rows["src0-mirror"]["drop_reason"],
            rows["src0-mirror"]["duplicate_of"]) == ("near_dup", "near_duplicate", a_ids["src0"])
    assert (rows["src1-mkv"]["drop_reason"], rows["src1-mkv"]["duplicate_of"]) == ("duplicate_content", a_ids["src1"])
    assert (rows["garbage"]["drop_stage"], rows["garbage"]["drop_reason"]) == ("decode", "decode_failed")
    assert (rows["ingest-refused"]["drop_stage"], rows["ingest-refused"]["drop_reason"]) == ("ingest", "too_short")
    assert json.loads(rows["src3"]["quality"])["sharpness"] > 0.05
    assert second.kept == 1

    rejections = _table(store, "tables/rejections/cur-b/")[0]
    assert rejections.schema.equals(REJECTION_SCHEMA) and rejections.num_rows == 4
    assert all("clips/robot-b/" in d for d in rejections["detail"].to_pylist()[:2] + rejections["key"].to_pylist())

    page = store.get_bytes(second.report_key).decode()
    assert "near_duplicate" in page and "skipped" in page and "robot-b" in page
    assert_renders(store.root / second.report_key, tmp_path / "report.png")

    # a re-run of the same run id gives the same selection and adds nothing to the index
    again = run_curate(settings, "ingest-b", "cur-b", beam_flags=QUICK)
    assert (again.kept, again.dropped) == (second.kept, second.dropped)
    assert [s["run"] for s in read_manifest(store, "main")["segments"]] == ["cur-a", "cur-b"]

    # a new curation round over partner A's clips keeps what the first round kept (they are not duplicates of
    # themselves) and indexes nothing twice
    round2 = run_curate(settings, "ingest-a", "cur-a-round2", beam_flags=QUICK)
    assert (round2.kept, round2.dropped) == (first.kept, first.dropped)
    assert read_manifest(store, "main")["segments"][-1] == {
        "run": "cur-a-round2", "key": "indexes/neardup/main/segments/cur-a-round2.npz", "clips": 0}


@pytest.mark.slow
def test_curate_with_encoder_embeds_dedups_and_balances(tmp_path):
    settings = Settings(home=tmp_path / ".alliance")
    store = open_store(settings=settings)
    a, b = make_deliveries(store)
    write_clip_table(store, "ingest-ab", a + b)
    write_tiny_encoder(store, "train-tiny")
    config = CurateConfig(semantic=SemDedupConfig(eps=1e-6, clusters=2, hierarchy=(1,), target=3))
    summary = run_curate(settings, "ingest-ab", "cur-ab", encoder_run="train-tiny", beam_flags=QUICK, config=config)
    assert "train-tiny" in summary.semantic
    assert summary.kept == 3 and summary.dropped["balance"] == {"balanced_out": 2}
    work = _table(store, "tables/curation-work/cur-ab/")
    embedded = [r for t in work for r in t.select(["clip_id", "embedding", "stage"]).to_pylist()]
    assert all((r["embedding"] is not None) == (r["stage"] in (None, "quality")) for r in embedded)
    assert {len(r["embedding"]) for r in embedded if r["embedding"]} == {16}
    selection = [r for t in _table(store, "tables/selections/cur-ab/") for r in t.to_pylist()]
    assert all(r["cluster"] in (0, 1) for r in selection if r["kept"])
    page = store.get_bytes(summary.report_key).decode()
    assert "after balancing" in page


def assert_renders(page, png) -> None:
    """The page renders in headless Chromium to a picture that is not blank, and its thumbnails are JPEGs."""
    import av

    screenshot(str(page), str(png))
    with av.open(str(png)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape[:2] == (1600, 1280)
    assert image.std() > 20  # text, charts and thumbnails, not a blank page
    html = page.read_text()
    thumbs = sorted(page.parent.glob("thumbs/*.jpg"))
    assert thumbs and all(f"thumbs/{t.name}" in html for t in thumbs)
    assert thumbs[0].read_bytes()[:2] == b"\xff\xd8"


def screenshot(page: str, png: str, height: int = 1600) -> None:
    """Headless Debian chromium (see RECIPES.md), with the flags that keep it off the network."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", f"--window-size=1280,{height}",
                        f"--screenshot={png}", f"file://{page}"], check=True, capture_output=True, timeout=60)


@pytest.mark.slow
def test_portable_runner_on_s3_with_encoder(tmp_path, s3_store, seaweed):
    """The same pipeline on Beam's PortableRunner (local job service, LOOPBACK) against the real S3 server."""
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import s3_settings

    settings = Settings(home=tmp_path / ".alliance", store_url=s3_store.url, s3=s3_settings(seaweed))
    a, b = make_deliveries(s3_store)
    write_clip_table(s3_store, "ingest-s3", a[:4] + b[:3])
    write_tiny_encoder(s3_store, "train-tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        summary = run_curate(settings, "ingest-s3", "cur-s3", encoder_run="train-tiny", record=False,
                             config=CurateConfig(semantic=SemDedupConfig(eps=1e-6)),
                             beam_flags=("--runner=PortableRunner", f"--job_endpoint=localhost:{port}",
                                         "--environment_type=LOOPBACK"))
    finally:
        service.terminate()
        service.wait(timeout=30)
    # src0..2 and the blurred clip from A; B's mirrored src0 and remuxed src1 are duplicates, src3 is new
    assert summary.kept == 4 and summary.dropped["quality"] == {"blurry": 1}
    assert summary.dropped["near_dup"] == {"near_duplicate": 1} and summary.dropped["exact_dup"] == {
        "duplicate_content": 1}
    assert s3_store.exists(summary.report_key) and "train-tiny" in summary.semantic


def test_repeated_recording_and_new_thresholds_without_decoding(tmp_path, monkeypatch):
    import apache_beam

    settings = Settings(home=tmp_path / ".alliance")
    store = open_store(settings=settings)
    good = encode(camera_frames(210, 40))
    rows = [clip_row(store, "glasses-a", "d1", "good", good),
            clip_row(store, "glasses-a", "d1", "soft", encode_like_ingest(gaussian_blur(real_frames("bikes", 0, 40), 3)))]
    again = dict(rows[0], partner="robot-b", delivery="d9", clip_key=rows[0]["clip_key"].replace("glasses-a", "robot-b"))
    store.put_bytes(again["clip_key"], good)
    write_clip_table(store, "ing", rows + [again])

    first = run_curate(settings, "ing", "cur", beam_flags=QUICK, record=False)
    assert first.clips_in == 3 and first.kept == 1
    assert first.dropped == {"quality": {"blurry": 1}, "exact_dup": {"duplicate_recording": 1}}
    selection = pa.concat_tables(_table(store, "tables/selections/cur/"))
    assert selection.num_rows == 2 and len(set(selection["clip_id"].to_pylist())) == 2  # one row per clip
    assert selection.filter(pa.compute.field("kept"))["partner"].to_pylist() == ["glasses-a"]
    rejected = pa.concat_tables(_table(store, "tables/rejections/cur/")).to_pylist()
    assert any(r["reason"] == "duplicate_recording" and "robot-b" in r["key"] for r in rejected)
    assert "duplicate_recording 1" in store.get_bytes(first.report_key).decode()  # the funnel counts it too

    # looser blur threshold: decided again from the stored signals, no Beam job, no decoding
    monkeypatch.setattr(apache_beam, "Pipeline", lambda *a, **k: pytest.fail("the Beam job ran again"))
    looser = CurateConfig(quality=parse_overrides(["min_sharpness=0"]))
    second = run_curate(settings, "ing", "cur", beam_flags=QUICK, record=False, config=looser, reuse_analysis=True)
    assert second.kept == 2 and second.dropped == {"exact_dup": {"duplicate_recording": 1}}

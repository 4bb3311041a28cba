"""Ingest accounts for every file: odd names, links, fifos, empty and identical files end as clips or rejections."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from alliance.catalog import Catalog
from alliance.models import Recording
from alliance.settings import RunnerSettings, Settings
from alliance.store import open_store
from alliance.tables import Rejection
from ingest.clips import ClipConfig, sha256_file
from ingest.synth import ImuSpec, VideoSpec, imu_signal, imu_table, write_imu_csv, write_video
from pipelines.ingest import IngestSummary, account, progress_view, run_ingest
from pipelines.sources import path_of, printable_path, refs_from_folder
from pipelines.sinks import read_table

CONFIG = ClipConfig(clip_s=1.0)
LATIN1 = os.fsdecode(b"caf\xe9.mp4")  # not UTF-8: Python carries the byte as a surrogate escape


@pytest.fixture(scope="module")
def delivery(tmp_path_factory) -> dict[str, Path]:
    """A folder with every kind of entry a partner's disk may hold, and an outside folder its links point to."""
    root = tmp_path_factory.mktemp("accounting")
    folder, outside = root / "delivery", root / "outside"
    write_video(outside / "secret.mp4", VideoSpec(frames=20, scene="noise"))
    write_video(outside / "linked-dir" / "inner.mp4", VideoSpec(frames=20, scene="moving_square"))
    write_imu_csv(outside / "secret.imu.csv", imu_table(ImuSpec(seconds=2.5)))
    write_video(folder / "good.mp4", VideoSpec(frames=20, scene="counter"))
    write_video(folder / LATIN1, VideoSpec(frames=20, scene="head_motion"))
    write_video(folder / "twins" / "a.mp4", VideoSpec(frames=20, scene="pan"))
    shutil.copyfile(folder / "twins" / "a.mp4", folder / "twins" / "b.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    os.mkfifo(folder / "fifo.mp4")
    os.symlink(outside / "secret.mp4", folder / "link.mp4")
    os.symlink(outside / "linked-dir", folder / "dirlink")
    os.symlink(outside / "secret.imu.csv", folder / "good.imu.csv")
    return {"folder": folder, "outside": outside}


def local_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", runner=RunnerSettings(direct_num_workers=2))


def test_printable_names_are_lossless_and_printable():
    for raw in (b"caf\xe9.mp4", "café.mp4".encode(), b"a\\xe9.mp4", b"line\nbreak\x7f.mp4", b"\xe2\x80\xaeevil.mp4"):
        shown = printable_path(os.fsdecode(raw))
        assert shown.isprintable() and shown.encode("utf-8")
        assert os.fsencode(path_of(shown)) == raw
    assert printable_path(LATIN1) == "caf\\xe9.mp4" and printable_path("café.mp4") == "café.mp4"


def test_the_folder_walk_refuses_links_and_fifos_without_reading_them(delivery):
    found = refs_from_folder(delivery["folder"], "lab")
    folder = delivery["folder"].resolve()
    assert sorted(Path(r.location).name for r in found.refs) == sorted(["good.mp4", LATIN1, "a.mp4", "b.mp4",
                                                                        "empty.mp4"])
    assert {Path(r.key).name: r.reason for r in found.refused} == {
        "link.mp4": "symlink", "dirlink": "symlink", "fifo.mp4": "not_regular_file"}
    assert all("deliver" in r.detail and r.key in r.detail for r in found.refused)
    assert [(r.key, r.stage, r.reason) for r in found.side_refused] == [
        (f"{folder}/good.imu.csv", "sensors", "symlink")]
    latin = next(r for r in found.refs if r.source.endswith("caf\\xe9.mp4"))
    assert latin.location == str(folder / LATIN1) and json.loads(latin.meta_json)["source"] == latin.source


def test_every_file_ends_as_clips_or_a_rejection_and_a_rerun_writes_nothing_new(tmp_path, delivery, capsys):
    folder = delivery["folder"].resolve()
    settings = local_settings(tmp_path)
    seen = []
    summary = run_ingest(settings, str(folder), "acc-a", partner="lab", config=CONFIG,
                         on_progress=lambda counts, n: seen.append((dict(counts), n)))
    store = open_store(settings=settings)
    clips = read_table(store, summary.clip_table_prefix).to_pylist()
    sources = {json.loads(r["recording_meta"])["source"] for r in clips}
    assert sources == {f"{folder}/good.mp4", f"{folder}/caf\\xe9.mp4", f"{folder}/twins/a.mp4"}
    assert len(clips) == 6 and summary.clips_written == 6
    # nothing outside the folder was read: no clip of the linked files, no rejection under the linked folder
    outside = {sha256_file(delivery["outside"] / "secret.mp4"),
               sha256_file(delivery["outside"] / "linked-dir" / "inner.mp4")}
    assert not outside & {r["recording_id"] for r in clips}
    rejections = read_table(store, summary.rejection_table_prefix).to_pylist()
    assert not [r for r in rejections if "linked-dir" in r["key"] or "secret" in r["key"]]
    by_key = {r["key"]: r for r in rejections}
    expected = {"link.mp4": "symlink", "dirlink": "symlink", "fifo.mp4": "not_regular_file",
                "empty.mp4": "empty_file", "twins/b.mp4": "duplicate_recording", "good.imu.csv": "symlink"}
    assert {k: by_key[f"{folder}/{k}"]["reason"] for k in expected} == expected
    assert len(rejections) == len(expected)
    duplicate = by_key[f"{folder}/twins/b.mp4"]["detail"]
    assert f"{folder}/twins/b.mp4" in duplicate and f"{folder}/twins/a.mp4" in duplicate
    # the summary adds up, and so does the progress the bar showed
    assert summary.recordings_in == 8 and summary.recordings_with_clips == 3
    assert summary.recordings_refused == {"duplicate_recording": 1, "empty_file": 1, "not_regular_file": 1,
                                          "symlink": 2}
    assert summary.accounted and summary.unaccounted == ()
    assert seen[-1][1] == 8 and seen[-1][0]["recordings_done"] == 8
    # the catalog holds the odd name in its printable form
    catalog = Catalog(settings.effective_catalog_url)
    with catalog.session() as session:
        keys = {r.key for r in session.query(Recording).all()}
    catalog.dispose()
    assert keys == sources

    from alliance.cli.main import main

    before = {o.key: o.size for o in store.list("clips/")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLIANCE_HOME", str(tmp_path / "home"))
        capsys.readouterr()
        main(["pipeline", "ingest", "--source", str(folder), "--run", "acc-b", "--partner", "lab", "--clip-s", "1",
              "--", "--direct_num_workers=2"])
    printed = capsys.readouterr().out
    assert "clips written" in printed and "clips kept" not in printed
    assert "every recording accounted for: 8 in = 3 with clips + 5 refused" in printed
    again = read_table(store, "tables/clips/acc-b").to_pylist()
    assert sorted(r["clip_id"] for r in again) == sorted(r["clip_id"] for r in clips)
    assert {o.key: o.size for o in store.list("clips/")} == before
    rerun = read_table(store, "tables/rejections/acc-b").to_pylist()
    assert sorted((r["key"], r["reason"]) for r in rerun) == sorted((r["key"], r["reason"]) for r in rejections)


def test_identical_files_count_as_two_recordings_in_progress():
    counts = {"planned/aaa": 2, "done/aaa": 2, "planned/bbb": 3, "done/bbb": 1, "recordings_refused": 1}
    assert progress_view(counts)["recordings_done"] == 2


def test_accounting_names_what_ended_neither_way():
    refused = [Rejection("/d/fifo.mp4", "source", "not_regular_file", "")]
    outcomes = [{"source": "/d/a.mp4", "recording_id": "r1", "reason": ""},
                {"source": "/d/b.mp4", "recording_id": "r2", "reason": ""},
                {"source": "/d/c.mp4", "recording_id": "r3", "reason": "truncated"}]
    rejections = [{"key": "r2-000000000-f", "reason": "decode_failed"}, {"key": "r2-000001000-f",
                                                                          "reason": "decode_failed"}]
    with_clips, refused_by, missing = account(["/d/a.mp4", "/d/b.mp4", "/d/c.mp4", "/d/lost.mp4"], refused,
                                              outcomes, {"r1"}, rejections)
    assert (with_clips, refused_by, missing) == (1, {"decode_failed": 1, "not_regular_file": 1, "truncated": 1},
                                                 ("/d/lost.mp4",))
    summary = IngestSummary("r", 5, with_clips, 0, 0, {}, "", "", 0.0, recordings_refused=refused_by,
                            unaccounted=missing)
    assert not summary.accounted


def test_delivery_toml_declares_the_sidecar_and_a_broken_one_is_a_rejection(tmp_path):
    folder = tmp_path / "glasses"
    write_video(folder / "walk.mp4", VideoSpec(frames=20, scene="head_motion"))
    write_imu_csv(folder / "walk.imu.csv", imu_table(ImuSpec(seconds=3.0, t0=0.5)))
    (folder / "delivery.toml").write_text('license = "CC-BY-4.0"\n[sensors.imu]\nrate_hz = 200\nclock_offset_s = -0.5\n'
                                          'units = {gx = "rad/s"}\n')
    (spec,) = refs_from_folder(folder, "lab").refs[0].sensors
    assert (spec.stream, spec.rate_hz, spec.clock_offset_s, dict(spec.units)) == ("imu", 200.0, -0.5, {"gx": "rad/s"})
    assert spec.label == f"{folder.resolve()}/walk.imu.csv"
    settings = local_settings(tmp_path)
    summary = run_ingest(settings, str(folder), "declared", partner="lab", config=CONFIG, record=False)
    store = open_store(settings=settings)
    first = min(read_table(store, summary.clip_table_prefix).to_pylist(), key=lambda r: r["t0"])
    values = np.load(io.BytesIO(store.get_bytes(json.loads(first["sensor_keys"])["imu"])))
    # the contract's offset wins: sensor time s is video time s - 0.5, so the sine's start is video time 0
    np.testing.assert_allclose(values, imu_signal(np.arange(10) / 10 + 0.5, ImuSpec()), atol=2e-3)

    (folder / "delivery.toml").write_text("[sensors\nrate_hz = ")
    found = refs_from_folder(folder, "lab")
    assert [(Path(r.key).name, r.reason) for r in found.side_refused] == [("delivery.toml", "metadata_invalid")]
    assert found.refs[0].sensors[0].clock_offset_s == 0.0  # read with defaults, the recording still ingested


def test_a_folder_with_nothing_to_read_still_runs_and_writes_its_rejections(tmp_path):
    folder = tmp_path / "only-a-fifo"
    folder.mkdir()
    os.mkfifo(folder / "camera.mp4")
    settings = local_settings(tmp_path)
    summary = run_ingest(settings, str(folder), "fifo-only", partner="lab", config=CONFIG, record=False)
    assert (summary.recordings_in, summary.recordings_refused, summary.accounted) == (1, {"not_regular_file": 1}, True)
    rows = read_table(open_store(settings=settings), summary.rejection_table_prefix).to_pylist()
    assert [(Path(r["key"]).name, r["reason"]) for r in rows] == [("camera.mp4", "not_regular_file")]


def test_an_xsens_text_export_beside_a_video_is_its_imu_stream(tmp_path):
    from ingest.sensors import read_stream
    from tests.ingest.test_imu_formats import xsens

    folder = tmp_path / "rig"
    write_video(folder / "walk.mp4", VideoSpec(frames=20, scene="head_motion"))
    xsens(folder / "walk.imu.txt", seconds=3.0, rate=100.0)
    (spec,) = refs_from_folder(folder, "lab").refs[0].sensors
    assert (spec.stream, spec.label) == ("imu", f"{folder.resolve()}/walk.imu.txt")
    times = np.concatenate([chunk[0] for chunk in read_stream(spec)])
    assert len(times) == 300 and abs(float(np.median(np.diff(times))) - 0.01) < 1e-9

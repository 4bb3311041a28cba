"""Each DoFn on its own in a TestPipeline: what goes in, what comes out on each tag (apache_beam.testing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from alliance.settings import RunnerSettings, Settings
from alliance.store import open_store
from curation.evalset import camera_frames, encode
from curation.select import CurateConfig
from ingest.clips import ClipConfig, WindowTask, sha256_file
from ingest.synth import VideoSpec, write_video
from pipelines.curate import AnalyzeClip
from pipelines.ingest_graph import IdentifyRecording, IngestWindow, PlanRecording, window_key
from pipelines.sources import RecordingRef
from tests.curation.conftest import clip_row

CONFIG = ClipConfig(clip_s=1.0)
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def in_memory() -> BeamTestPipeline:
    return BeamTestPipeline(options=PipelineOptions(IN_MEMORY))


def settings_for(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", runner=RunnerSettings(direct_num_workers=1))


def local_ref(path: Path, **kw) -> RecordingRef:
    return RecordingRef(str(path), True, "p", "d", **kw)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dofn-videos")
    return {"good": write_video(root / "good.mp4", VideoSpec(frames=25, scene="counter")),
            "garbage": _write(root / "garbage.mp4", b"\x00not a video" * 40)}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_identify_hashes_a_recording_and_refuses_a_missing_one(tmp_path, videos):
    settings, good = settings_for(tmp_path), videos["good"]
    sha = sha256_file(good)
    with in_memory() as p:
        out = (p | beam.Create([local_ref(good), local_ref(tmp_path / "gone.mp4")])
               | beam.ParDo(IdentifyRecording(settings, "r")).with_outputs("rejected", "outcomes", main="hashed"))
        assert_that(out.hashed, equal_to([(sha, local_ref(good, recording_id=sha))]), label="hashed")
        assert_that(out.rejected | beam.Map(lambda r: (Path(r.key).name, r.stage, r.reason)),
                    equal_to([("gone.mp4", "decode", "missing_file")]), label="rejected")
        assert_that(out.outcomes | beam.Map(lambda o: (Path(o["source"]).name, o["reason"])),
                    equal_to([("gone.mp4", "missing_file")]), label="outcomes")


def test_plan_gives_one_window_per_second_and_refuses_garbage_with_its_probe_reason(tmp_path, videos):
    settings = settings_for(tmp_path)
    good = local_ref(videos["good"], recording_id="a" * 64)
    garbage = local_ref(videos["garbage"], recording_id="b" * 64)
    with in_memory() as p:
        out = (p | beam.Create([good, garbage])
               | beam.ParDo(PlanRecording(settings, CONFIG, "r")).with_outputs("rejected", "outcomes",
                                                                               main="windows"))
        assert_that(out.windows | beam.Map(lambda e: (e[0].source, round(e[1].window.t0, 3))),
                    equal_to([(good.source, 0.0), (good.source, 1.0)]), label="windows")
        assert_that(out.rejected | beam.Map(lambda r: (Path(r.key).name, r.stage, r.reason)),
                    equal_to([("garbage.mp4", "decode", "not_video")]), label="rejected")
        assert_that(out.outcomes | beam.Map(lambda o: (Path(o["source"]).name, o["reason"])),
                    equal_to([("good.mp4", ""), ("garbage.mp4", "not_video")]), label="outcomes")


def planned_windows(videos, tmp_path) -> tuple[RecordingRef, list[WindowTask]]:
    from ingest.clips import RecordingInfo, plan_recording

    ref = local_ref(videos["good"], recording_id="c" * 64)
    info = RecordingInfo(ref.recording_id, ref.partner, ref.delivery, ref.source)
    return ref, [t for t in plan_recording(ref.location, info, (), CONFIG) if isinstance(t, WindowTask)]


def test_window_cuts_a_clip_row_and_stores_its_file_and_a_broken_window_is_refused(tmp_path, videos):
    settings = settings_for(tmp_path)
    ref, tasks = planned_windows(videos, tmp_path)
    broken = replace(tasks[1], window=replace(tasks[1].window, start_pts=10 ** 9))  # seeks past the end
    with in_memory() as p:
        out = (p | beam.Create([(ref, tasks[0]), (ref, broken)])
               | beam.ParDo(IngestWindow(settings, CONFIG, "r")).with_outputs("rejected", main="rows"))
        assert_that(out.rows | beam.Map(lambda row: (row["clip_id"], row["frames"], row["status"])),
                    equal_to([(window_key(tasks[0]), 10, "ingested")]), label="rows")
        assert_that(out.rejected | beam.Map(lambda r: (r.key, r.stage)),
                    equal_to([(window_key(broken), "decode")]), label="rejected")
    store = open_store(settings=settings)
    assert store.exists(f"clips/p/{ref.recording_id}/{window_key(tasks[0])}.mp4")


def test_analyze_clip_measures_a_clip_and_refuses_one_that_does_not_decode(tmp_path):
    settings = settings_for(tmp_path)
    store = open_store(settings=settings)
    good = clip_row(store, "p", "d", "good", encode(camera_frames(7, 40)))
    garbage = clip_row(store, "p", "d", "garbage", b"\x00not a video" * 50)
    with in_memory() as p:
        out = (p | beam.Create([good, garbage])
               | beam.ParDo(AnalyzeClip(settings, CurateConfig(), None, 4)).with_outputs("embed", main="rows"))
        verdicts = out.rows | beam.Map(lambda kv: (kv[1][1]["clip_id"], kv[1][1]["reason"], bool(kv[1][1]["signals"])))
        assert_that(verdicts, equal_to([(good["clip_id"], None, True), (garbage["clip_id"], "decode_failed", False)]))
        assert_that(out.embed, equal_to([]), label="no embeddings without an encoder")

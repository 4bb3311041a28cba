"""One failure contract (issue 20): a media fault is a rejection with a reason; an infrastructure fault (helper, child
start, local copy, store) is a RetryableError that fails the attempt and is never a rejection, so the recording is
ingested once the fault passes; the unforeseen is a dead letter with its traceback in the rejection table, and the
run goes on."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from alliance.errors import StoreError
from alliance.settings import RunnerSettings, Settings, StoreAddress
from alliance.store import open_store
from alliance.tables import REJECTION_SCHEMA
from curation.evalset import camera_frames, encode
from curation.select import CurateConfig
from ingest import bounded
from ingest.bounded import BoundedCallError
from ingest.clips import ClipConfig, RecordingInfo, WindowTask, plan_recording, sha256_file
from ingest.synth import VideoSpec, write_video
from pipelines import curate as curate_graph
from pipelines import ingest_graph
from pipelines.ingest import run_ingest
from pipelines.ingest_graph import IdentifyRecording, IngestWindow, LocalCopies, PlanRecording, window_key
from pipelines.sinks import DEAD_LETTERS, read_table
from pipelines.sources import RecordingRef
from tests.curation.conftest import clip_row

CONFIG = ClipConfig(clip_s=1.0)
IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")  # one process: the faults injected here
# reach the DoFns


def settings_for(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", runner=RunnerSettings(direct_num_workers=1))


def in_memory() -> BeamTestPipeline:
    return BeamTestPipeline(options=PipelineOptions(list(IN_MEMORY)))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("contract") / "good.mp4", VideoSpec(frames=25, scene="counter"))


class RemoteStore:
    """The test's file store seen as a remote one (LocalCopies copies it), whose calls can fail on purpose."""

    def __init__(self, inner, failing: dict[str, int]):
        self.inner, self.failing = inner, failing

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            if self.failing.get(name, 0) > 0:
                self.failing[name] -= 1
                raise StoreError(f"{args[0] if args else ''}: the store answered 503 (injected)")
            return method(*args, **kwargs)

        return call


def remote(monkeypatch, failing: dict[str, int] | None = None) -> dict[str, int]:
    failing = {} if failing is None else failing
    _stores_in_workers(monkeypatch, failing)
    return failing


def _stores_in_workers(monkeypatch, failing: dict[str, int]) -> None:
    """Every store a DoFn opens (DoFns open theirs from a StoreAddress) answers 503 to the `failing` calls."""
    real = StoreAddress.open
    monkeypatch.setattr(StoreAddress, "open", lambda address: RemoteStore(real(address), failing))


def store_ref(settings: Settings, video: Path, **kw) -> RecordingRef:
    key = "landing/p/d/files/good.mp4"
    open_store(settings=settings).put_file(key, str(video))
    return RecordingRef(key, False, "p", "d", **kw)


def windows_of(ref: RecordingRef, video: Path) -> list[WindowTask]:
    info = RecordingInfo(ref.recording_id, ref.partner, ref.delivery, ref.source)
    return [t for t in plan_recording(str(video), info, (), CONFIG) if isinstance(t, WindowTask)]


def cut(settings: Settings, ref: RecordingRef, task: WindowTask) -> None:
    """Run IngestWindow on one window; passes only if it gives its clip row and no rejection."""
    with in_memory() as p:
        out = (p | beam.Create([(ref, task)])
               | beam.ParDo(IngestWindow(settings, CONFIG, "r")).with_outputs("rejected", main="rows")
               .with_exception_handling(**DEAD_LETTERS))
        assert_that(out.rows | beam.Map(lambda row: row["clip_id"]), equal_to([window_key(task)]), label="rows")
        assert_that(out.rejected, equal_to([]), label="rejected")
        assert_that(out.dead, equal_to([]), label="dead")


def plan(settings: Settings, ref: RecordingRef, windows: int) -> None:
    with in_memory() as p:
        out = (p | beam.Create([ref])
               | beam.ParDo(PlanRecording(settings, CONFIG, "r")).with_outputs("rejected", "outcomes", main="windows")
               .with_exception_handling(**DEAD_LETTERS))
        assert_that(out.windows | beam.combiners.Count.Globally(), equal_to([windows]), label="windows")
        assert_that(out.rejected, equal_to([]), label="rejected")
        assert_that(out.dead, equal_to([]), label="dead")


def test_a_helper_that_does_not_start_fails_the_attempt_and_the_retry_plans_the_recording(tmp_path, good,
                                                                                        monkeypatch):
    settings = settings_for(tmp_path)
    ref = RecordingRef(str(good), True, "p", "d", recording_id=sha256_file(good))
    if bounded._helper is not None:
        bounded._helper.stop()
    with monkeypatch.context() as patched:
        patched.setattr(bounded.sys, "executable", "/bin/false")
        with pytest.raises(Exception, match="RetryableError|did not start"):  # no rejection, no dead letter: raised
            plan(settings, ref, 2)
    plan(settings, ref, 2)  # the fault passed: Beam's retry (here: the next attempt) plans both windows


def test_a_child_that_never_takes_the_call_fails_the_attempt_and_the_retry_cuts_the_clip(tmp_path, good,
                                                                                      monkeypatch):
    settings = settings_for(tmp_path)
    ref = RecordingRef(str(good), True, "p", "d", recording_id=sha256_file(good))
    task = windows_of(ref, good)[0]
    with monkeypatch.context() as patched:
        patched.setattr(bounded._Child, "start", lambda self, fn, args: False)
        with pytest.raises(Exception, match="did not take the call"):
            cut(settings, ref, task)
    cut(settings, ref, task)


def test_a_local_copy_evicted_under_the_call_fails_the_attempt_and_the_retry_cuts_the_clip(tmp_path, good,
                                                                                        monkeypatch):
    settings = settings_for(tmp_path)
    remote(monkeypatch)
    ref = store_ref(settings, good, recording_id=sha256_file(good))
    task = windows_of(ref, good)[0]
    original = LocalCopies.path

    def evicted_by_a_sibling(self, key):
        path = original(self, key)
        Path(path).unlink()
        return path

    with monkeypatch.context() as patched:
        patched.setattr(LocalCopies, "path", evicted_by_a_sibling)
        with pytest.raises(Exception, match="evicted"):  # not "not_video: no such file"
            cut(settings, ref, task)
    cut(settings, ref, task)


def test_a_store_error_fails_the_attempt_and_the_retry_identifies_the_recording(tmp_path, good, monkeypatch):
    settings = settings_for(tmp_path)
    failing = remote(monkeypatch, {"size": 1})
    ref = store_ref(settings, good)

    def identify():
        with in_memory() as p:
            out = (p | beam.Create([ref])
                   | beam.ParDo(IdentifyRecording(settings, "r")).with_outputs("rejected", "outcomes", main="hashed")
                   .with_exception_handling(**DEAD_LETTERS))
            assert_that(out.hashed | beam.Map(lambda kv: kv[0]), equal_to([sha256_file(good)]), label="hashed")
            assert_that(out.rejected, equal_to([]), label="rejected")
            assert_that(out.dead, equal_to([]), label="dead")

    with pytest.raises(Exception, match="503"):
        identify()
    assert failing == {"size": 0}
    identify()


def test_a_store_error_is_retried_by_a_rerun_of_the_whole_ingest_and_never_refuses_the_recording(tmp_path, good,
                                                                                                monkeypatch):
    folder = tmp_path / "delivery"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(good.read_bytes())
    settings = settings_for(tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(IngestWindow, "setup", _store_that_fails_puts)
        with pytest.raises(Exception, match="503"):
            run_ingest(settings, str(folder), "flaky", IN_MEMORY, config=CONFIG, record=False)
    summary = run_ingest(settings, str(folder), "flaky", IN_MEMORY, config=CONFIG, record=False)
    assert summary.recordings_with_clips == 1 and summary.rejections == {} and summary.clips_written == 2


def _store_that_fails_puts(self) -> None:
    self.store = RemoteStore(self.store_address.open(), {"put_file": 1})
    self.copies = LocalCopies(self.store)
    self.progress = ingest_graph.ProgressWriter(self.store, ingest_graph.progress_prefix(self.run))


def test_an_unforeseen_error_is_a_dead_letter_with_its_traceback_and_the_run_goes_on(tmp_path, good, monkeypatch):
    folder = tmp_path / "delivery"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes(good.read_bytes())
    (folder / "b.mp4").open("ab").write(b"\0")  # other bytes: not a duplicate of a.mp4
    settings = settings_for(tmp_path)
    planner = ingest_graph.plan_recording

    def plan_with_a_bug(path, info, sensors, config):
        if path.endswith("b.mp4"):
            return 1 / 0
        return planner(path, info, sensors, config)

    monkeypatch.setattr(ingest_graph, "plan_recording", plan_with_a_bug)
    summary = run_ingest(settings, str(folder), "buggy", IN_MEMORY, config=CONFIG, record=False)
    assert summary.recordings_with_clips == 1 and summary.recordings_refused == {"ingest_error": 1}
    assert not summary.unaccounted
    rejections = read_table(open_store(settings=settings), summary.rejection_table_prefix, REJECTION_SCHEMA)
    [row] = rejections.to_pylist()
    assert row["key"].endswith("b.mp4") and (row["stage"], row["reason"]) == ("decode", "ingest_error")
    assert "Traceback" in row["detail"] and "ZeroDivisionError" in row["detail"] and "plan_with_a_bug" in row["detail"]


def test_a_window_whose_child_raised_a_bug_is_a_dead_letter_not_decode_failed(tmp_path, good, monkeypatch):
    settings = settings_for(tmp_path)
    ref = RecordingRef(str(good), True, "p", "d", recording_id=sha256_file(good))
    task = windows_of(ref, good)[0]

    def buggy_child(*args, **kwargs):
        raise BoundedCallError(f"{ref.source}: unexpected error in the bounded child; its traceback:\nKeyError: 'x'")

    monkeypatch.setattr(ingest_graph, "run_bounded", buggy_child)
    with in_memory() as p:
        out = (p | beam.Create([(ref, task)])
               | beam.ParDo(IngestWindow(settings, CONFIG, "r")).with_outputs("rejected", main="rows")
               .with_exception_handling(**DEAD_LETTERS))
        letters = (out.dead | beam.ParDo(ingest_graph.DeadLetters(settings, "r")).with_outputs("rejected",
                                                                                                "outcomes"))
        assert_that(out.rejected, equal_to([]), label="no decode verdict")
        assert_that(letters.rejected | beam.Map(lambda r: (r.key, r.reason, "KeyError: 'x'" in r.detail,
                                                           "Traceback" in r.detail)),
                    equal_to([(window_key(task), "ingest_error", True, True)]), label="dead letter")


def test_curate_analysis_that_raises_is_analysis_failed_with_its_traceback(tmp_path, monkeypatch):
    settings = settings_for(tmp_path)
    store = open_store(settings=settings)
    rows = [clip_row(store, "p", "d", name, encode(camera_frames(seed, 40))) for seed, name in ((1, "ok"), (2, "odd"))]
    analyze = curate_graph.analyze_clip

    def analyze_with_a_bug(row, data, cfg):
        if row["clip_id"] == rows[1]["clip_id"]:
            raise IndexError("made up for the test")
        return analyze(row, data, cfg)

    monkeypatch.setattr(curate_graph, "analyze_clip", analyze_with_a_bug)
    with in_memory() as p:
        analysed = (p | beam.Create(rows)
                    | beam.ParDo(curate_graph.AnalyzeClip(settings, CurateConfig(), None, 4)).with_outputs(
                        "embed", main="rows").with_exception_handling(**DEAD_LETTERS))
        failed = analysed.dead | beam.Map(curate_graph.analysis_failed, 4)
        assert_that(analysed.rows | beam.Map(lambda kv: (kv[1][1]["clip_id"], kv[1][1]["reason"])),
                    equal_to([(rows[0]["clip_id"], None)]), label="analysed")
        assert_that(failed | beam.Map(lambda kv: (kv[1][1]["clip_id"], kv[1][1]["stage"], kv[1][1]["reason"],
                                                  "IndexError: made up" in kv[1][1]["detail"],
                                                  "Traceback" in kv[1][1]["detail"])),
                    equal_to([(rows[1]["clip_id"], "decode", "analysis_failed", True, True)]), label="failed")


def test_curate_retries_a_store_error_instead_of_refusing_the_clip(tmp_path, monkeypatch):
    settings = settings_for(tmp_path)
    store = open_store(settings=settings)
    row = clip_row(store, "p", "d", "ok", encode(camera_frames(3, 40)))
    failing = {"get_bytes": 1}
    _stores_in_workers(monkeypatch, failing)

    def analyse():
        with in_memory() as p:
            analysed = (p | beam.Create([row])
                        | beam.ParDo(curate_graph.AnalyzeClip(settings, CurateConfig(), None, 4)).with_outputs(
                            "embed", main="rows").with_exception_handling(**DEAD_LETTERS))
            assert_that(analysed.rows | beam.Map(lambda kv: kv[1][1]["reason"]), equal_to([None]), label="rows")
            assert_that(analysed.dead, equal_to([]), label="dead")

    with pytest.raises(Exception, match="503"):
        analyse()
    analyse()

"""The ingest Beam graph: recordings -> identified (identical files meet) -> windows (fanned out) -> clips, clip
table and rejections. Each DoFn is a few lines around a plain function of `ingest/`."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import apache_beam as beam
import pyarrow as pa

from alliance.errors import KeyNotFound, RetryableError, is_infrastructure
from alliance.settings import Settings, StoreAddress
from alliance.store import LocalStore, ObjectStore, validate_key
from alliance.tables import CLIP_SCHEMA, Rejection
from ingest.bounded import run_bounded
from ingest.clips import ClipConfig, RecordingInfo, WindowTask, clip_id, cut_window, plan_recording, sha256_file
from ingest.errors import DecodeError
from ingest.sensors import SensorSpec
from pipelines.sinks import DEAD_LETTERS, ProgressWriter, WriteParts, WriteRejections, count, dead_letter_detail, \
    reject, safe_text, table_prefix, under_contract
from pipelines.sources import RecordingRef, link_detail, not_regular_detail

NAMESPACE = "ingest"


def work_prefix(run: str) -> str:
    """Where the workers leave what only the launcher reads (progress, outcomes); removed when the run ends."""
    return f"tables/ingest-work/{run}"


def progress_prefix(run: str) -> str:
    return f"{work_prefix(run)}/progress"


# One row per recording that reached the workers: how it ended there. reason "" means windows were planned.
OUTCOME_SCHEMA = pa.schema([("source", pa.string()), ("recording_id", pa.string()), ("reason", pa.string())])


def _outcome(ref: RecordingRef, reason: str = "") -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput("outcomes", {"source": ref.source, "recording_id": ref.recording_id,
                                                 "reason": reason})


class LocalCopies:
    """PyAV needs a seekable local file: store objects are copied once per worker (file:// stores are read in place).

    The copies live under one directory and the oldest go first once they pass `limit_bytes`.
    """

    _lock = threading.Lock()

    def __init__(self, store: ObjectStore, root: str | Path | None = None, limit_bytes: int = 20 << 30):
        self.store = store
        self.root = Path(root or Path(tempfile.gettempdir()) / f"alliance-ingest-{os.getuid()}")
        self.limit = limit_bytes

    def path(self, key: str) -> str:
        """A local path of the object; a copy that cannot be made (disk full, evicted under us) is a RetryableError,
        never the recording's fault. A missing key stays KeyNotFound: that one is the recording's."""
        if isinstance(self.store, LocalStore):
            return str(self.store.root / validate_key(key))
        name = hashlib.sha1(f"{self.store.url}/{key}".encode()).hexdigest()[:20] + Path(key).suffix
        target = self.root / name
        with self._lock:
            size = self.store.size(key)
            try:
                if not (target.is_file() and target.stat().st_size == size):
                    self._evict(size)
                    self._download(key, target)
                os.utime(target)
            except OSError as e:
                if is_infrastructure(e) or isinstance(e, KeyNotFound):
                    raise
                raise RetryableError(f"{key}: its local copy {target} could not be made ({e}); the work is "
                                     f"retried") from e
        return str(target)

    def copy_gone(self, ref: RecordingRef, path: str) -> bool:
        """Whether the local copy a call read has gone (evicted by a sibling worker): then a verdict reached on it
        says nothing about the recording."""
        return not ref.local and not isinstance(self.store, LocalStore) and not os.path.isfile(path)

    def _download(self, key: str, target: Path) -> None:
        """Into a private temporary name, then renamed: workers in other processes may fetch the same key."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out, self.store.open_read(key) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _evict(self, incoming: int) -> None:
        if not self.root.is_dir():
            return
        files = sorted((p for p in self.root.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files) + incoming
        for old in files:
            if total <= self.limit:
                return
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


def _resolve(copies: LocalCopies, ref: RecordingRef) -> tuple[str, tuple[SensorSpec, ...]]:
    if ref.local:
        return ref.location, ref.sensors
    return copies.path(ref.source), tuple(replace(s, path=copies.path(s.path), label=s.label or s.path)
                                          for s in ref.sensors)


class UnreadableRecording(Exception):
    """A local recording that is no longer a regular file of the folder; `reason` is snake_case."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(detail)


def hash_local(ref: RecordingRef, chunk: int = 1 << 20) -> tuple[str, int]:
    """(sha256, bytes) of a local recording, opened without following a link and without blocking on a fifo (the
    folder walk refused both already; this holds if the file was swapped for one since)."""
    try:
        fd = os.open(ref.location, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:  # the name is now a link
            raise UnreadableRecording("symlink", link_detail(ref.source)) from e
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableRecording("not_regular_file", not_regular_detail(ref.source))
        digest, size = hashlib.sha256(), 0
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _missing(ref: RecordingRef, error: Exception) -> Rejection:
    return Rejection(ref.source, "decode", "missing_file", f"{ref.source}: cannot be read ({safe_text(str(error))}); "
                                                           f"check that the upload completed and the path is right")


def recording_fault(ref: RecordingRef, error: Exception) -> Rejection:
    """The one except-chain of the recording stages: a media fault -> its rejection. An infrastructure fault is
    re-raised (a local copy of a store recording that fails is one), and so is the unforeseen: `under_contract` makes
    a retry of the first and a dead letter of the second."""
    if isinstance(error, UnreadableRecording):
        return Rejection(ref.source, "source", error.reason, error.detail)
    if isinstance(error, DecodeError):
        return Rejection.of(ref.source, "decode", error)
    if isinstance(error, KeyNotFound):
        return _missing(ref, error)
    if isinstance(error, OSError) and not is_infrastructure(error):
        if ref.local:  # the partner's own file in the folder
            return _missing(ref, error)
        raise RetryableError(f"{ref.source}: its local copy could not be read ({error}); the work is "
                             f"retried") from error
    raise error


class RunStep(beam.DoFn):
    """What every ingest DoFn shares: the store's address (never a secret: workers bring their own credentials), the
    run, and per worker the store, local copies for PyAV and the progress the launcher polls."""

    def __init__(self, settings: Settings | StoreAddress, run: str):
        self.store_address, self.run = StoreAddress.of(settings), run

    def setup(self) -> None:
        self.store = self.store_address.open()
        self.copies = LocalCopies(self.store)
        self.progress = ProgressWriter(self.store, progress_prefix(self.run))

    def finish_bundle(self) -> None:
        self.progress.flush()


class IdentifyRecording(RunStep):
    """A recording -> (what identical files share, the ref with its sha256); one that cannot be read -> a rejection.

    Hashing here, in the workers, lets identical files meet at a GroupByKey: the launcher reads no bytes."""

    @under_contract
    def process(self, ref: RecordingRef):
        count(NAMESPACE, "recordings_in")
        if ref.recording_id:  # from the catalog: the id is known and unique there
            yield ref.recording_id, ref
            return
        try:
            if ref.local:
                recording_id, size = hash_local(ref)
            else:
                path = self.copies.path(ref.source)
                recording_id, size = sha256_file(path), os.path.getsize(path)
        except Exception as e:
            rejection = recording_fault(ref, e)
            self.progress.add(recordings_refused=1, **{f"rejected_{rejection.reason}": 1})
            yield reject(NAMESPACE, rejection)
            yield _outcome(ref, rejection.reason)
            return
        # an empty file is refused as empty_file by the probe, never as a duplicate of another empty one
        yield (recording_id if size else f"{recording_id}:{ref.source}"), replace(ref, recording_id=recording_id)


class FirstOfIdentical(RunStep):
    """(sha256, refs with those bytes) -> the first by name; every other one -> a duplicate_recording rejection
    naming both files. Deterministic whatever order the workers hashed them in."""

    def process(self, element):
        _, refs = element
        first, *others = sorted(refs, key=lambda ref: ref.source)
        yield first
        for ref in others:
            self.progress.add(recordings_refused=1, rejected_duplicate_recording=1)
            yield reject(NAMESPACE, Rejection(
                ref.source, "exact_dup", "duplicate_recording",
                f"{ref.source}: the same bytes (sha256 {ref.recording_id}) as {first.source}, which this run ingests; "
                f"{ref.source} was refused so the recording is not ingested twice: deliver one copy"))
            yield _outcome(ref, "duplicate_recording")


class PlanRecording(RunStep):
    """A recording -> (ref, window task) per clip window; a recording that gives none -> a tagged rejection."""

    def __init__(self, settings: Settings | StoreAddress, config: ClipConfig, run: str):
        super().__init__(settings, run)
        self.config = config

    @under_contract
    def process(self, ref: RecordingRef):
        windows = 0
        rejection = path = None
        try:
            path, sensors = _resolve(self.copies, ref)
            info = RecordingInfo(ref.recording_id or sha256_file(path), ref.partner, ref.delivery, ref.source,
                                 meta_json=ref.meta_json)
            for item in plan_recording(path, info, sensors, self.config):
                if isinstance(item, Rejection):  # a sensor stream that cannot be used; the video goes on
                    yield reject(NAMESPACE, item)
                    continue
                windows += 1
                yield ref, item
        except Exception as e:
            if isinstance(e, DecodeError) and path is not None and self.copies.copy_gone(ref, path):
                raise RetryableError(f"{ref.source}: its local copy was evicted while it was probed; the work is "
                                     f"retried") from e
            rejection = recording_fault(ref, e)
            self.progress.add(**{f"rejected_{rejection.reason}": 1})
            yield reject(NAMESPACE, rejection)
        count(NAMESPACE, "windows_planned", windows)
        if windows:  # windows planned before a failure still run: the recording ends with their clips
            self.progress.add(recordings_planned=1, windows_planned=windows, **{f"planned/{ref.progress_key}": windows})
            yield _outcome(ref)
        else:  # plan_recording raises rather than plan nothing; "no_windows" only guards the accounting
            self.progress.add(recordings_refused=1)
            yield _outcome(ref, rejection.reason if rejection is not None else "no_windows")


def window_key(task: WindowTask) -> str:
    """What a window's rejection names: the id its first clip would have."""
    return clip_id(task.recording.recording_id, task.window.t0, task.config.fingerprint)


class IngestWindow(RunStep):
    """(ref, window task) -> clip rows (files stored under their keys); a window that fails -> a tagged rejection.

    The work runs in a child process bounded by config.window_timeout_s: a hang or a crash costs one window.
    """

    def __init__(self, settings: Settings | StoreAddress, config: ClipConfig, run: str, overwrite: bool = False):
        super().__init__(settings, run)
        self.config, self.overwrite = config, overwrite

    @under_contract
    def process(self, element):
        ref, task = element
        count(NAMESPACE, "windows_in")
        path = ref.location if ref.local else self.copies.path(ref.source)
        workdir = tempfile.mkdtemp(prefix="alliance-clip-")
        try:
            outputs, refusals = run_bounded(cut_window, (replace(task, path=path), workdir), path=ref.source,
                                            timeout_s=self.config.window_timeout_s,
                                            memory_limit_mb=self.config.memory_limit_mb)
        except DecodeError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            if self.copies.copy_gone(ref, path):
                raise RetryableError(f"{ref.source}: its local copy was evicted while a window was cut; the work is "
                                     f"retried") from e
            self.progress.add(windows_done=1, **{f"rejected_{e.reason}": 1, f"done/{ref.progress_key}": 1})
            yield reject(NAMESPACE, Rejection.of(window_key(task), "decode", e))
            return
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        new = 0
        try:
            for output in outputs:
                for key, local in sorted(output.files.items()):
                    if self.overwrite or not self.store.exists(key):
                        self.store.put_file(key, local)
                        new += 1
                count(NAMESPACE, "clips_out")
                yield output.row
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        count(NAMESPACE, "clip_files_new", new)
        for refusal in refusals:
            yield reject(NAMESPACE, refusal)
        self.progress.add(windows_done=1, clips_out=len(outputs), clip_files_new=new,
                          **{f"done/{ref.progress_key}": 1},
                          **{f"rejected_{reason}": n for reason, n in Counter(r.reason for r in refusals).items()})


class DeadLetters(RunStep):
    """Beam's dead letters of one stage -> `ingest_error` rejections whose detail is the traceback, so a person reads
    them in the rejection table; a recording's also ends there (its outcome), a window's counts as done."""

    def process(self, letter):
        element, failure = letter
        if isinstance(element, RecordingRef):
            key, done = element.source, {"recordings_refused": 1}
            yield _outcome(element, "ingest_error")
        else:
            ref, task = element
            key, done = window_key(task), {"windows_done": 1, f"done/{ref.progress_key}": 1}
        self.progress.add(rejected_ingest_error=1, **done)
        yield reject(NAMESPACE, Rejection(key, "decode", "ingest_error", dead_letter_detail(key, failure)))


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, refs: Sequence[RecordingRef], run: str,
                   config: ClipConfig, overwrite: bool = False, parts: int = 4,
                   refused: Sequence[Rejection] = ()) -> None:
    """Recordings -> hashed (identical files meet; the first by name goes on) -> planned windows -> (reshuffled, so
    one long recording spreads over workers) -> clips. `refused`: what the launcher refused, for the same table."""
    identified = (pipeline
                  | "Recordings" >> beam.Create(list(refs))
                  | "SpreadRecordings" >> beam.Reshuffle()
                  | "Identify" >> beam.ParDo(IdentifyRecording(settings, run)).with_outputs(
                      "rejected", "outcomes", main="hashed").with_exception_handling(**DEAD_LETTERS))
    firsts = (identified.hashed
              | "ByContent" >> beam.GroupByKey()
              | "FirstOfIdentical" >> beam.ParDo(FirstOfIdentical(settings, run)).with_outputs("rejected", "outcomes",
                                                                                               main="refs"))
    # partial: a long recording's windows (sensor samples and all) go on as they are planned, never held in memory
    planned = firsts.refs | "Plan" >> beam.ParDo(PlanRecording(settings, config, run)).with_outputs(
        "rejected", "outcomes", main="windows").with_exception_handling(partial=True, **DEAD_LETTERS)
    clips = (planned.windows
             | "SpreadWindows" >> beam.Reshuffle()
             | "Cut" >> beam.ParDo(IngestWindow(settings, config, run, overwrite)).with_outputs(
                 "rejected", main="rows").with_exception_handling(**DEAD_LETTERS))
    dead = ((identified.dead, planned.dead, clips.dead) | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetters" >> beam.ParDo(DeadLetters(settings, run)).with_outputs("rejected", "outcomes"))
    _ = clips.rows | "ClipTable" >> WriteParts(settings, table_prefix("clips", run), CLIP_SCHEMA, "clip_id", parts)
    rejected = [identified.rejected, firsts.rejected, planned.rejected, clips.rejected, dead.rejected]
    if refused:
        rejected.append(pipeline | "LauncherRefused" >> beam.Create(list(refused)))
    _ = tuple(rejected) | "AllRejections" >> beam.Flatten() | "RejectionTable" >> WriteRejections(settings, run, parts)
    _ = ((identified.outcomes, firsts.outcomes, planned.outcomes, dead.outcomes) | "AllOutcomes" >> beam.Flatten()
         | "Outcomes" >> WriteParts(settings, f"{work_prefix(run)}/outcomes", OUTCOME_SCHEMA, "source", parts))

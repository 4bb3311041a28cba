"""The ingest Beam pipeline: recordings -> windows (fanned out) -> clips, clip table and rejections; its launcher."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import tomllib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa

from alliance.errors import AllianceError, InvalidKey, KeyNotFound, StoreError
from alliance.settings import Settings
from alliance.store import LocalStore, ObjectStore, open_store, validate_key
from alliance.tables import CLIP_SCHEMA, REJECTION_SCHEMA, Rejection
from ingest.bounded import run_bounded
from ingest.clips import ClipConfig, RecordingInfo, Refusal, clip_id, cut_window, plan_recording, sha256_file
from ingest.errors import DecodeError
from ingest.sensors import SensorError, SensorSpec, sidecar_spec
from pipelines.sinks import (ProgressWriter, WriteParts, WriteRejections, clear_prefix, count, counters, ensure_part,
                             read_progress, read_table, safe_text, table_prefix, write_jsonl)

NAMESPACE = "ingest"
BYTES_PER_PART = 64 << 30  # ~64 GB of partner video gives some 10^4 clip rows: one parquet part
SENSOR_SUFFIXES = (".csv", ".txt")  # sensor sidecars: CSV, and the text exports of Xsens MT Manager and YEI
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts")
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo", ".ts": "video/mp2t", ".mts": "video/mp2t"}


class IngestInputError(AllianceError):
    """A source that names no recording, or one the launcher cannot read."""


# --------------------------------------------------------------------------- file names of any bytes

_ESCAPE = re.compile(r"\\\\|\\x[0-9a-f]{2}")


def printable_path(path: str | os.PathLike) -> str:
    """How tables, messages, logs and the catalog name a local file: printable, and lossless (path_of undoes it).

    The name's bytes (os.fsencode) are read as UTF-8; a byte that is not UTF-8, and each byte of a character that
    does not print (control, format, separator), is written \\xNN, and a backslash \\\\. A printable UTF-8 name
    stays as it is ("café.mp4"); the Latin-1 bytes b"caf\\xe9.mp4" become the text caf\\xe9.mp4."""
    out = []
    for char in os.fsencode(path).decode("utf-8", "surrogateescape"):
        if "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xdc00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif not char.isprintable():
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)


def path_of(printable: str) -> str:
    """The local path, as os.fsdecode gives it (any bytes), that printable_path wrote as `printable`."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(printable):
        raw += printable[position:match.start()].encode()
        raw += b"\\" if match.group() == "\\\\" else bytes([int(match.group()[2:], 16)])
        position = match.end()
    raw += printable[position:].encode()
    return os.fsdecode(bytes(raw))


@dataclass(frozen=True)
class RecordingRef:
    """A recording to ingest: where its bytes are (a store key, or a local path) and what the contract says."""

    source: str  # a store key, or a local path in printable_path form: every table, message and the catalog use it
    local: bool  # True: `source` and the sensor paths are local files; False: store keys
    partner: str
    delivery: str
    recording_id: str = ""  # sha256; computed by the pipeline when empty
    sensors: tuple[SensorSpec, ...] = ()
    meta_json: str = "{}"
    bytes: int = 0  # size of the recording, to size the clip table's parts

    @property
    def location(self) -> str:
        """What to open: the local path with its original bytes, or the store key."""
        return path_of(self.source) if self.local else self.source

    @property
    def progress_key(self) -> str:
        """Names this ref in progress objects: two refs with the same bytes (one recording id) stay two."""
        return hashlib.sha1(self.source.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sources:
    """What a source holds: the recordings to ingest, and what the launcher refused before reading any bytes."""

    refs: tuple[RecordingRef, ...]
    refused: tuple[Rejection, ...] = ()  # entries that could be recordings (links, fifos, ...): each counts as one in
    side_refused: tuple[Rejection, ...] = ()  # files beside the recordings (sensor sidecars, delivery.toml)


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did; the launching command prints it and records it with the run.

    Every recording is accounted for: recordings_in == recordings_with_clips + sum(recordings_refused.values()),
    and `unaccounted` names any that ended neither way (a bug, never expected)."""

    run_id: str
    recordings_in: int
    recordings_with_clips: int
    clips_written: int  # rows in the clip table
    clip_files_new: int  # objects written this run (0 on a re-run)
    rejections: dict[str, int]  # reason -> count, every rejection (recordings, windows, sensor files)
    clip_table_prefix: str
    rejection_table_prefix: str
    seconds: float
    clips_per_partner: dict[str, int] = field(default_factory=dict)
    recordings_refused: dict[str, int] = field(default_factory=dict)  # reason -> recordings that gave no clip
    unaccounted: tuple[str, ...] = ()

    @property
    def accounted(self) -> bool:
        return not self.unaccounted and \
            self.recordings_in == self.recordings_with_clips + sum(self.recordings_refused.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


# --------------------------------------------------------------------------- local copies for PyAV


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
        if isinstance(self.store, LocalStore):
            return str(self.store.root / validate_key(key))
        name = hashlib.sha1(f"{self.store.url}/{key}".encode()).hexdigest()[:20] + Path(key).suffix
        target = self.root / name
        with self._lock:
            size = self.store.size(key)
            if not (target.is_file() and target.stat().st_size == size):
                self._evict(size)
                self._download(key, target)
            os.utime(target)
        return str(target)

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


def _rejection(key: str, error: DecodeError) -> Rejection:
    return Rejection(key, "decode", error.reason, str(error))


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
            raise UnreadableRecording("symlink", _link_detail(ref.source)) from e
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableRecording("not_regular_file", _not_regular_detail(ref.source))
        digest, size = hashlib.sha256(), 0
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _missing(ref: RecordingRef, error: Exception) -> Rejection:
    return Rejection(ref.source, "decode", "missing_file", f"{ref.source}: cannot be read ({safe_text(str(error))}); "
                                                           f"check that the upload completed and the path is right")


def _ingest_error(ref: RecordingRef, error: Exception) -> Rejection:
    return Rejection(ref.source, "decode", "ingest_error", f"{ref.source}: {type(error).__name__}: "
                                                           f"{safe_text(str(error))}; ingest could not handle this "
                                                           f"file: report it with the file attached")


# --------------------------------------------------------------------------- DoFns: thin wrappers


class IdentifyRecording(beam.DoFn):
    """A recording -> (what identical files share, the ref with its sha256); one that cannot be read -> a rejection.

    Hashing here, in the workers, lets identical files meet at a GroupByKey: the launcher reads no bytes."""

    def __init__(self, settings: Settings, run: str):
        self.settings, self.run = settings, run

    def setup(self) -> None:
        self.store = open_store(settings=self.settings)
        self.copies = LocalCopies(self.store)
        self.progress = ProgressWriter(self.store, progress_prefix(self.run))

    def process(self, ref: RecordingRef):
        count(NAMESPACE, "recordings_in")
        try:
            if ref.recording_id:  # from the catalog: the id is known and unique there
                yield ref.recording_id, ref
                return
            if ref.local:
                recording_id, size = hash_local(ref)
            else:
                path = self.copies.path(ref.source)
                recording_id, size = sha256_file(path), os.path.getsize(path)
        except UnreadableRecording as e:
            rejection = Rejection(ref.source, "source", e.reason, e.detail)
        except (KeyNotFound, OSError) as e:
            rejection = _missing(ref, e)
        except StoreError:
            raise  # the store itself failed: Beam retries the bundle, the recording is not at fault
        except Exception as e:  # an unforeseen failure costs this recording only, and is recorded with its cause
            rejection = _ingest_error(ref, e)
        else:
            # an empty file is refused as empty_file by the probe, never as a duplicate of another empty one
            yield (recording_id if size else f"{recording_id}:{ref.source}"), replace(ref, recording_id=recording_id)
            return
        count(NAMESPACE, f"rejected_{rejection.reason}")
        self.progress.add(recordings_refused=1, **{f"rejected_{rejection.reason}": 1})
        yield beam.pvalue.TaggedOutput("rejected", rejection)
        yield _outcome(ref, rejection.reason)

    def finish_bundle(self) -> None:
        self.progress.flush()


class FirstOfIdentical(beam.DoFn):
    """(sha256, refs with those bytes) -> the first by name; every other one -> a duplicate_recording rejection
    naming both files. Deterministic whatever order the workers hashed them in."""

    def __init__(self, settings: Settings, run: str):
        self.settings, self.run = settings, run

    def setup(self) -> None:
        self.progress = ProgressWriter(open_store(settings=self.settings), progress_prefix(self.run))

    def process(self, element):
        _, refs = element
        first, *others = sorted(refs, key=lambda ref: ref.source)
        yield first
        for ref in others:
            count(NAMESPACE, "rejected_duplicate_recording")
            self.progress.add(recordings_refused=1, rejected_duplicate_recording=1)
            yield beam.pvalue.TaggedOutput("rejected", Rejection(
                ref.source, "exact_dup", "duplicate_recording",
                f"{ref.source}: the same bytes (sha256 {ref.recording_id}) as {first.source}, which this run ingests; "
                f"{ref.source} was refused so the recording is not ingested twice: deliver one copy"))
            yield _outcome(ref, "duplicate_recording")

    def finish_bundle(self) -> None:
        self.progress.flush()


class PlanRecording(beam.DoFn):
    """A recording -> (ref, window task) per clip window; a recording that gives none -> a tagged rejection."""

    def __init__(self, settings: Settings, config: ClipConfig, run: str):
        self.settings, self.config, self.run = settings, config, run

    def setup(self) -> None:
        self.store = open_store(settings=self.settings)
        self.copies = LocalCopies(self.store)
        self.progress = ProgressWriter(self.store, progress_prefix(self.run))

    def process(self, ref: RecordingRef):
        windows = 0
        rejection = None
        try:
            path, sensors = _resolve(self.copies, ref)
            info = RecordingInfo(ref.recording_id or sha256_file(path), ref.partner, ref.delivery, ref.source,
                                 meta_json=ref.meta_json)
            for item in plan_recording(path, info, sensors, self.config):
                if isinstance(item, Refusal):
                    count(NAMESPACE, f"rejected_{item.reason}")
                    yield beam.pvalue.TaggedOutput("rejected",
                                                   Rejection(item.key, item.stage, item.reason, item.detail))
                    continue
                windows += 1
                yield ref, item
        except DecodeError as e:
            rejection = _rejection(ref.source, e)
        except (KeyNotFound, OSError) as e:
            rejection = _missing(ref, e)
        except StoreError:
            raise  # the store itself failed: Beam retries the bundle, the recording is not at fault
        except Exception as e:  # an unforeseen failure costs this recording only, and is recorded with its cause
            rejection = _ingest_error(ref, e)
        if rejection is not None:
            count(NAMESPACE, f"rejected_{rejection.reason}")
            self.progress.add(**{f"rejected_{rejection.reason}": 1})
            yield beam.pvalue.TaggedOutput("rejected", rejection)
        count(NAMESPACE, "windows_planned", windows)
        if windows:  # windows planned before a failure still run: the recording ends with their clips
            self.progress.add(recordings_planned=1, windows_planned=windows, **{f"planned/{ref.progress_key}": windows})
            yield _outcome(ref)
        else:  # plan_recording raises rather than plan nothing; "no_windows" only guards the accounting
            self.progress.add(recordings_refused=1)
            yield _outcome(ref, rejection.reason if rejection is not None else "no_windows")

    def finish_bundle(self) -> None:
        self.progress.flush()


class IngestWindow(beam.DoFn):
    """(ref, window task) -> clip rows (files stored under their keys); a window that fails -> a tagged rejection.

    The work runs in a child process bounded by config.window_timeout_s: a hang or a crash costs one window.
    """

    def __init__(self, settings: Settings, config: ClipConfig, run: str, overwrite: bool = False):
        self.settings, self.config, self.run, self.overwrite = settings, config, run, overwrite

    def setup(self) -> None:
        self.store = open_store(settings=self.settings)
        self.copies = LocalCopies(self.store)
        self.progress = ProgressWriter(self.store, progress_prefix(self.run))

    def process(self, element):
        ref, task = element
        count(NAMESPACE, "windows_in")
        workdir = tempfile.mkdtemp(prefix="alliance-clip-")
        try:
            path = ref.location if ref.local else self.copies.path(ref.source)
            outputs, refusals = run_bounded(cut_window, (replace(task, path=path), workdir), path=ref.source,
                                            timeout_s=self.config.window_timeout_s,
                                            memory_limit_mb=self.config.memory_limit_mb)
        except DecodeError as e:
            count(NAMESPACE, f"rejected_{e.reason}")
            self.progress.add(windows_done=1, **{f"rejected_{e.reason}": 1, f"done/{ref.progress_key}": 1})
            yield beam.pvalue.TaggedOutput("rejected", _rejection(
                clip_id(task.recording.recording_id, task.window.t0, task.config.fingerprint), e))
            shutil.rmtree(workdir, ignore_errors=True)
            return
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
            count(NAMESPACE, f"rejected_{refusal.reason}")
            yield beam.pvalue.TaggedOutput("rejected", Rejection(refusal.key, refusal.stage, refusal.reason,
                                                                 refusal.detail))
        self.progress.add(windows_done=1, clips_out=len(outputs), clip_files_new=new,
                          **{f"done/{ref.progress_key}": 1},
                          **{f"rejected_{reason}": n for reason, n in Counter(r.reason for r in refusals).items()})

    def finish_bundle(self) -> None:
        self.progress.flush()


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, refs: Sequence[RecordingRef], run: str,
                   config: ClipConfig, overwrite: bool = False, parts: int = 4,
                   refused: Sequence[Rejection] = ()) -> None:
    """Recordings -> hashed (identical files meet; the first by name goes on) -> planned windows -> (reshuffled, so
    one long recording spreads over workers) -> clips. `refused`: what the launcher refused, for the same table."""
    identified = (pipeline
                  | "Recordings" >> beam.Create(list(refs))
                  | "SpreadRecordings" >> beam.Reshuffle()
                  | "Identify" >> beam.ParDo(IdentifyRecording(settings, run)).with_outputs("rejected", "outcomes",
                                                                                              main="hashed"))
    firsts = (identified.hashed
              | "ByContent" >> beam.GroupByKey()
              | "FirstOfIdentical" >> beam.ParDo(FirstOfIdentical(settings, run)).with_outputs("rejected", "outcomes",
                                                                                               main="refs"))
    planned = firsts.refs | "Plan" >> beam.ParDo(PlanRecording(settings, config, run)).with_outputs(
        "rejected", "outcomes", main="windows")
    clips = (planned.windows
             | "SpreadWindows" >> beam.Reshuffle()
             | "Cut" >> beam.ParDo(IngestWindow(settings, config, run, overwrite)).with_outputs("rejected",
                                                                                                main="rows"))
    _ = clips.rows | "ClipTable" >> WriteParts(settings, table_prefix("clips", run), CLIP_SCHEMA, "clip_id", parts)
    rejected = [identified.rejected, firsts.rejected, planned.rejected, clips.rejected]
    if refused:
        rejected.append(pipeline | "LauncherRefused" >> beam.Create(list(refused)))
    _ = tuple(rejected) | "AllRejections" >> beam.Flatten() | "RejectionTable" >> WriteRejections(settings, run, parts)
    _ = ((identified.outcomes, firsts.outcomes, planned.outcomes) | "AllOutcomes" >> beam.Flatten()
         | "Outcomes" >> WriteParts(settings, f"{work_prefix(run)}/outcomes", OUTCOME_SCHEMA, "source", parts))


# --------------------------------------------------------------------------- sources


def scan_folder(folder: Path) -> Iterator[tuple[str, Path, str]]:
    """(kind, path, why) for every entry under folder, depth first in name order, never through a link.

    kind: "file" (regular), "link" (a symbolic link, whatever it points to), "other" (fifo, socket, device) or
    "unreadable" (a sub-folder that cannot be listed; why says so). Nothing is opened but the folders."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as e:
        yield "unreadable", folder, e.strerror or str(e)
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            yield "link", path, ""
        elif entry.is_dir(follow_symlinks=False):
            yield from scan_folder(path)
        elif entry.is_file(follow_symlinks=False):
            yield "file", path, ""
        else:
            yield "other", path, ""


def _link_detail(name: str) -> str:
    return (f"{name}: a symbolic link; ingest never follows links, so nothing it points to was read: put the file "
            f"itself in the delivery")


def _not_regular_detail(name: str) -> str:
    return (f"{name}: not a regular file (a fifo, socket or device); ingest reads only regular files: put the "
            f"recording itself in the delivery")


def _entry_refusal(kind: str, path: Path, why: str, stage: str = "source") -> Rejection | None:
    """Why the launcher refuses an entry that could hold a recording or a sensor stream; None for a regular file."""
    name = printable_path(path)
    if kind == "link":
        return Rejection(name, stage, "symlink", _link_detail(name))
    if kind == "other":
        return Rejection(name, stage, "not_regular_file", _not_regular_detail(name))
    if kind == "unreadable":
        return Rejection(name, stage, "unreadable_folder", f"{name}: the folder cannot be listed ({why}), so nothing "
                                                           f"under it was read: make it readable and run again")
    return None


def declared_sensors(folder: Path) -> tuple[dict[str, Mapping[str, Any]], tuple[Rejection, ...]]:
    """The folder's delivery.toml `[sensors.STREAM]` tables (what the partner declared: rate, units, offset), read
    with tomllib as `alliance deliver` writes it; ({}, ()) without one, ({}, a rejection) when it cannot be used."""
    path = folder / "delivery.toml"
    name = printable_path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return {}, ()
    except OSError as e:
        return {}, (Rejection(name, "source", "metadata_invalid", f"{name}: cannot be read ({e.strerror}); sensor "
                                                                  f"files are read with defaults"),)
    if not stat.S_ISREG(mode):
        refusal = _entry_refusal("link" if stat.S_ISLNK(mode) else "other", path, "")
        return {}, (replace(refusal, detail=f"{refusal.detail}; sensor files are read with defaults"),)
    try:
        sensors = tomllib.loads(path.read_bytes().decode("utf-8")).get("sensors", {})
        if not isinstance(sensors, dict) or not all(isinstance(v, dict) for v in sensors.values()):
            raise ValueError("[sensors] must hold one table per stream, e.g. [sensors.imu]")
    except (OSError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return {}, (Rejection(name, "source", "metadata_invalid", f"{name}: {safe_text(str(e))}; sensor files are "
                                                                  f"read with defaults: fix the file"),)
    return sensors, ()


def declared_consent(folder: Path) -> dict[str, bool]:
    """faces_allowed and audio_allowed of the folder's delivery.toml `[consent]`: each false unless it says true. A
    folder has no contract, so without one (or with one that cannot be read: declared_sensors reports it) faces are
    de-identified and audio dropped, as under a contract's defaults."""
    path = folder / "delivery.toml"
    try:
        consent = tomllib.loads(path.read_bytes().decode("utf-8")).get("consent", {}) \
            if stat.S_ISREG(os.lstat(path).st_mode) else {}
    except (OSError, ValueError):
        consent = {}
    consent = consent if isinstance(consent, dict) else {}
    return {name: consent.get(name) is True for name in ("faces_allowed", "audio_allowed")}


def _sidecars(video: Path, beside: Sequence[tuple[str, Path, str]], declared: Mapping[str, Mapping[str, Any]]
              ) -> tuple[tuple[SensorSpec, ...], list[Rejection]]:
    """The `{stem}.{stream}.csv` (or `.txt`: Xsens and YEI export text) files beside a video: their specs, and a
    rejection for each one that is a link, not a regular file, or unreadable as declared (the recording is ingested
    without that stream)."""
    specs, refused = [], []
    for kind, csv, why in beside:
        stream = csv.name[len(video.stem) + 1:-len(csv.suffix)]
        named = csv.name.startswith(f"{video.stem}.") and csv.suffix in SENSOR_SUFFIXES
        if not named or not stream or "." in stream:
            continue
        name = printable_path(csv)
        refusal = _entry_refusal(kind, csv, why, stage="sensors")
        if refusal is not None:
            refused.append(refusal)
            continue
        try:
            spec = sidecar_spec(csv, video, declared.get(stream))
        except SensorError as e:
            refused.append(Rejection(name, "sensors", e.reason, f"{name}: {safe_text(e.detail)}; clips of "
                                                                f"{printable_path(video)} carry no {stream} data"))
            continue
        except OSError as e:
            refused.append(Rejection(name, "sensors", "sensor_unreadable", f"{name}: cannot be read ({e.strerror}); "
                                                                           f"clips of {printable_path(video)} carry "
                                                                           f"no {stream} data"))
            continue
        specs.append(replace(spec, label=name))
    return tuple(specs), refused


def refs_from_folder(folder: Path, partner: str) -> Sources:
    """Video files under a local folder, never through a link; a `{stem}.{stream}.csv` beside one is its sensor
    stream, read as the folder's delivery.toml declares it. Links, fifos and devices named like videos are refused."""
    folder = folder.resolve()
    delivery = f"folder-{hashlib.sha1(partner.encode() + b':' + os.fsencode(folder)).hexdigest()[:12]}"
    declared, side_refused = declared_sensors(folder)
    consent = declared_consent(folder)
    side_refused = list(side_refused)
    entries = list(scan_folder(folder))
    csvs: dict[Path, list[tuple[str, Path, str]]] = defaultdict(list)
    for kind, path, why in entries:
        if path.suffix in SENSOR_SUFFIXES:
            csvs[path.parent].append((kind, path, why))
    refs, refused = [], []
    for kind, path, why in entries:
        if kind == "unreadable" or (kind == "link" and os.path.isdir(path)):  # could hold recordings: say so
            refused.append(_entry_refusal(kind, path, why))
            continue
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        if kind != "file":
            refused.append(_entry_refusal(kind, path, why))
            continue
        sensors, sensor_refused = _sidecars(path, csvs[path.parent], declared)
        side_refused += sensor_refused
        source = printable_path(path)
        meta = {"source": source, "delivery": delivery, "partner": partner, **consent}
        refs.append(RecordingRef(source, True, partner, delivery, sensors=sensors,
                                 meta_json=json.dumps(meta, sort_keys=True), bytes=os.lstat(path).st_size))
    return Sources(tuple(refs), tuple(refused), tuple(side_refused))


def refs_from_prefix(store: ObjectStore, prefix: str, partner: str) -> Sources:
    """Video objects under a store prefix (key order); `{stem}.{stream}.csv` siblings are not read here. A key the
    store cannot address (a file:// store holds any file name) is refused as invalid_key."""
    found = [o for o in store.list(prefix) if Path(o.key).suffix.lower() in VIDEO_SUFFIXES]
    delivery = f"prefix-{hashlib.sha1(f'{partner}:{store.url}/{prefix}'.encode()).hexdigest()[:12]}"
    refs, refused = [], []
    for o in found:
        try:
            validate_key(o.key)
        except InvalidKey as e:
            name = printable_path(o.key)
            refused.append(Rejection(name, "source", "invalid_key", f"{name}: {safe_text(str(e))}; rename the "
                                                                    f"object to a plain name"))
            continue
        refs.append(RecordingRef(o.key, False, partner, delivery, bytes=o.size,
                                 meta_json=json.dumps({"source": o.key, "delivery": delivery, "partner": partner},
                                                      sort_keys=True)))
    return Sources(tuple(refs), tuple(refused))


def refs_from_catalog(settings: Settings, store: ObjectStore) -> list[RecordingRef]:
    """Accepted recordings of the catalog, with their sensor streams and contract metadata from the manifest."""
    from sqlalchemy import select

    from alliance.catalog import Catalog
    from alliance.models import Recording

    catalog = Catalog(settings.effective_catalog_url)
    try:
        catalog.upgrade()
        with catalog.session() as session:
            rows = session.scalars(select(Recording).where(Recording.status == "accepted")
                                   .order_by(Recording.key)).all()
            recordings = [(r.id, r.key, r.partner_id, r.bytes) for r in rows]
    finally:
        catalog.dispose()
    manifests: dict[str, dict] = {}
    refs = []
    for recording_id, key, partner, size in recordings:
        parts = key.split("/")
        if len(parts) < 5 or parts[0] != "landing" or parts[3] != "files":
            raise IngestInputError(f"recording {recording_id}: key {key!r} is not under landing/PARTNER/DELIVERY/"
                                   f"files/; the catalog row is not from `alliance deliver`")
        delivery = parts[2]
        base = "/".join(parts[:3])
        if base not in manifests:
            try:
                manifests[base] = json.loads(store.get_bytes(f"{base}/manifest.json"))
            except KeyNotFound as e:
                raise IngestInputError(f"{store.describe(base + '/manifest.json')}: missing for accepted recording "
                                       f"{recording_id}; re-deliver or revoke it") from e
        manifest = manifests[base]
        relative = "/".join(parts[4:])
        entry = next((r for r in manifest.get("recordings", []) if r.get("path") == relative), {})
        sensors = tuple(SensorSpec.from_manifest(s, f"{base}/files/{s['path']}", label=f"{base}/files/{s['path']}")
                        for s in entry.get("sensors", []))
        consent = manifest.get("consent", {})
        meta = {"device": entry.get("device"), "license": manifest.get("license"),
                "consent_scope": consent.get("scope"), "consent_expires": consent.get("expires"),
                "faces_allowed": consent.get("faces_allowed", False), "audio_allowed": consent.get("audio_allowed",
                                                                                                  False),
                "delivery": delivery, "partner": partner, "start_time": entry.get("start_time"), "source": key}
        refs.append(RecordingRef(key, False, partner, delivery, recording_id, sensors,
                                 json.dumps(meta, sort_keys=True, default=str), size or 0))
    return refs


def resolve_source(settings: Settings, store: ObjectStore, source: str, partner: str = "local") -> Sources:
    """'catalog' | a local folder | a store prefix -> the recordings to ingest, and what was refused on the way."""
    shown = printable_path(source)
    if source == "catalog":
        found = Sources(tuple(refs_from_catalog(settings, store)))
        where = "the catalog has no accepted recording; deliver some first (`alliance deliver`)"
    elif Path(source).expanduser().is_dir():
        found = refs_from_folder(Path(source).expanduser(), partner)
        where = f"{shown}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder"
    else:
        prefix = source.removeprefix("store:")
        try:
            found = refs_from_prefix(store, prefix, partner)
        except InvalidKey as e:
            raise IngestInputError(f"{shown}: neither a local folder nor a store prefix ({safe_text(str(e))})") from e
        where = (f"{store.describe(prefix)}: no video objects under this store prefix (and no local folder of that "
                 f"name)")
    if not found.refs and not found.refused:
        raise IngestInputError(where)
    return found


# --------------------------------------------------------------------------- launcher


def run_ingest(settings: Settings, source: str, run_id: str, beam_flags: Sequence[str] = (), *,
               partner: str = "local", config: ClipConfig = ClipConfig(), overwrite: bool = False,
               record: bool = True, on_progress: Callable[[dict[str, int], int], None] | None = None,
               parts: int = 0) -> IngestSummary:
    """Ingest `source` ('catalog', a local folder or a store prefix) as run `run_id`; records the run afterwards.

    on_progress(counts, recordings_in) is called about once a second while the job runs. parts: files of the clip
    table (0: one per BYTES_PER_PART of source video, at least 4), so no worker holds more than a part's rows.
    """
    from pipelines.options import pipeline_options, worker_log_path, worker_output_to

    validate_key(f"tables/clips/{run_id}")
    try:
        validate_key(f"clips/{partner}")
    except InvalidKey as e:
        raise IngestInputError(f"partner {printable_path(partner)}: not usable in clip keys ({e})") from e
    store = open_store(settings=settings)
    found = resolve_source(settings, store, source, partner)
    refs, launcher_refused = found.refs, found.refused + found.side_refused
    started, started_at = time.perf_counter(), datetime.now(timezone.utc)
    clips_prefix, rejections_prefix = table_prefix("clips", run_id), table_prefix("rejections", run_id)
    for prefix in (clips_prefix, rejections_prefix, work_prefix(run_id)):
        clear_prefix(store, prefix)
    if record:
        _record_run(settings, run_id, "running", config, source, {}, started_at)
    pipeline = beam.Pipeline(options=pipeline_options(settings, beam_flags))
    parts = parts or max(4, -(-sum(ref.bytes for ref in refs) // BYTES_PER_PART))
    build_pipeline(pipeline, settings, refs, run_id, config, overwrite, parts, launcher_refused)
    already = Counter({"recordings_refused": len(found.refused),
                       **Counter(f"rejected_{r.reason}" for r in launcher_refused)})
    try:
        with worker_output_to(worker_log_path(settings, "ingest", run_id)):
            result = _run_with_progress(pipeline, store, run_id, len(refs) + len(found.refused), on_progress,
                                        already)
    except BaseException:
        if record:
            _record_run(settings, run_id, "failed", config, source, {}, started_at)
        raise
    metrics = counters(result, NAMESPACE)
    ensure_part(store, clips_prefix, CLIP_SCHEMA)
    ensure_part(store, rejections_prefix, REJECTION_SCHEMA)
    clips = read_table(store, clips_prefix, CLIP_SCHEMA)
    rejections = read_table(store, rejections_prefix, REJECTION_SCHEMA).to_pylist()
    outcomes = read_table(store, f"{work_prefix(run_id)}/outcomes", OUTCOME_SCHEMA).to_pylist()
    write_jsonl(store, f"{rejections_prefix}/rejections.jsonl", sorted(rejections, key=lambda r: r["key"]))
    clear_prefix(store, work_prefix(run_id))
    with_clips, refused, unaccounted = account([ref.source for ref in refs], found.refused, outcomes,
                                               set(clips.column("recording_id").to_pylist()), rejections)
    summary = IngestSummary(
        run_id=run_id, recordings_in=len(refs) + len(found.refused), recordings_with_clips=with_clips,
        clips_written=clips.num_rows, clip_files_new=int(metrics.get("clip_files_new", 0)),
        rejections=dict(sorted(Counter(r["reason"] for r in rejections).items())),
        clip_table_prefix=clips_prefix, rejection_table_prefix=rejections_prefix,
        seconds=round(time.perf_counter() - started, 3),
        clips_per_partner=dict(sorted(Counter(clips.column("partner").to_pylist()).items())),
        recordings_refused=refused, unaccounted=unaccounted)
    if record:
        _record_clips(settings, store, run_id, refs, clips)
        _record_run(settings, run_id, "succeeded", config, source, summary.to_json(), started_at)
    return summary


def account(sources: Sequence[str], refused: Sequence[Rejection], outcomes: Sequence[Mapping[str, str]],
            clip_recordings: set[str], rejections: Sequence[Mapping[str, str]]
            ) -> tuple[int, dict[str, int], tuple[str, ...]]:
    """How every recording ended: (with clips, refused by reason, sources with no outcome at all).

    A recording refused by the launcher or a worker counts under that reason; one whose windows were planned has
    clips, or counts under the commonest reason its windows were refused for ("no_clips" if none was given)."""
    ended = {o["source"]: o for o in outcomes}
    window_reasons: dict[str, Counter] = defaultdict(Counter)
    for r in rejections:
        window_reasons[r["key"].split("-", 1)[0]][r["reason"]] += 1
    with_clips, by_reason, unaccounted = 0, Counter(r.reason for r in refused), []
    for source in sources:
        outcome = ended.get(source)
        if outcome is None:
            unaccounted.append(source)
        elif outcome["reason"]:
            by_reason[outcome["reason"]] += 1
        elif outcome["recording_id"] in clip_recordings:
            with_clips += 1
        else:
            reasons = window_reasons.get(outcome["recording_id"], Counter())
            by_reason[min(reasons, key=lambda reason: (-reasons[reason], reason)) if reasons else "no_clips"] += 1
    return with_clips, dict(sorted(by_reason.items())), tuple(unaccounted)


def _run_with_progress(pipeline: beam.Pipeline, store: ObjectStore, run_id: str, recordings: int,
                       on_progress: Callable[[dict[str, int], int], None] | None, already: Counter = Counter()):
    """Run the job in a thread (the local runner blocks) and poll the progress objects the workers write; `already`:
    what the launcher counted before the job (entries it refused)."""
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            result = pipeline.run()
            result.wait_until_finish()
            outcome["result"] = result
        except BaseException as e:  # handed to the launching thread, which raises it
            outcome["error"] = e

    thread = threading.Thread(target=job, name=f"ingest-{run_id}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        if on_progress is not None:
            on_progress(progress_view(read_progress(store, progress_prefix(run_id)) + already), recordings)
    if "error" in outcome:
        raise outcome["error"]
    if on_progress is not None:
        on_progress(progress_view(read_progress(store, progress_prefix(run_id)) + already), recordings)
    return outcome["result"]


def progress_view(counts: Counter) -> dict[str, int]:
    """The workers' raw counts -> what a person follows: recordings done (every window through, or refused),
    windows planned and done, clips written, rejections by reason. Counts per ref, not per recording id: identical
    files are two recordings in, one refused."""
    view = {k: v for k, v in counts.items() if "/" not in k}
    planned = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("planned/")}
    done = sum(1 for ref, n in planned.items() if counts.get(f"done/{ref}", 0) >= n)
    view["recordings_done"] = done + counts.get("recordings_refused", 0)
    return view


def _record_run(settings: Settings, run_id: str, status: str, config: ClipConfig, source: str,
                summary: dict[str, Any], started_at: datetime) -> None:
    from alliance.catalog import Catalog
    from alliance.models import Run

    catalog = Catalog(settings.effective_catalog_url)
    try:
        catalog.upgrade()
        with catalog.session() as session:
            session.merge(Run(id=run_id, kind="ingest", status=status,
                              config={"source": printable_path(source), **config.to_json()},
                              summary=summary, started_at=started_at,
                              finished_at=None if status == "running" else datetime.now(timezone.utc)))
    finally:
        catalog.dispose()


def _record_clips(settings: Settings, store: ObjectStore, run_id: str, refs: Sequence[RecordingRef], clips) -> None:
    """Clip rows in the catalog; recordings that did not come from the catalog are registered first."""
    from sqlalchemy import select

    from alliance.catalog import Catalog
    from alliance.models import Clip, Delivery, Partner, Recording

    rows = clips.select(["clip_id", "recording_id", "partner", "delivery", "clip_key", "t0", "t1", "status",
                         "recording_meta"]).to_pylist()
    by_source = {ref.source: ref for ref in refs}
    catalog = Catalog(settings.effective_catalog_url)
    try:
        with catalog.session() as session:
            known = set(session.scalars(select(Recording.id).where(
                Recording.id.in_({r["recording_id"] for r in rows}))).all()) if rows else set()
            for row in rows:
                if row["recording_id"] in known:
                    continue
                source = json.loads(row["recording_meta"] or "{}").get("source", "")
                ref = by_source.get(source)
                if ref is None:
                    continue
                size = os.path.getsize(ref.location) if ref.local else store.size(ref.source)
                if session.get(Partner, ref.partner) is None:
                    session.add(Partner(id=ref.partner, display_name=ref.partner))
                    session.flush()
                if session.get(Delivery, ref.delivery) is None:
                    session.add(Delivery(id=ref.delivery, partner_id=ref.partner, status="accepted",
                                         contract_version="none"))
                    session.flush()
                session.merge(Recording(id=row["recording_id"], partner_id=ref.partner, delivery_id=ref.delivery,
                                        key=ref.source, bytes=size,
                                        media_type=MEDIA_TYPES.get(Path(ref.source).suffix.lower(), "video/mp4")))
                known.add(row["recording_id"])
            session.flush()
            for row in rows:
                session.merge(Clip(id=row["clip_id"], recording_id=row["recording_id"], partner_id=row["partner"],
                                   run_id=run_id, key=row["clip_key"], t0=row["t0"], t1=row["t1"],
                                   status=row["status"]))
    finally:
        catalog.dispose()

"""The ingest Beam pipeline: recordings -> windows (fanned out) -> clips, clip table and rejections; its launcher."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import apache_beam as beam

from alliance.errors import AllianceError, KeyNotFound, StoreError
from alliance.settings import Settings
from alliance.store import LocalStore, ObjectStore, open_store, validate_key
from alliance.tables import CLIP_SCHEMA, REJECTION_SCHEMA, Rejection
from ingest.bounded import run_bounded
from ingest.clips import ClipConfig, RecordingInfo, Refusal, clip_id, cut_window, plan_recording, sha256_file
from ingest.errors import DecodeError
from ingest.sensors import SensorSpec
from pipelines.sinks import (ProgressWriter, WriteParts, WriteRejections, clear_prefix, count, counters, ensure_part,
                             read_progress, read_table, table_prefix, write_jsonl)

NAMESPACE = "ingest"
BYTES_PER_PART = 64 << 30  # ~64 GB of partner video gives some 10^4 clip rows: one parquet part
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts")
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo", ".ts": "video/mp2t", ".mts": "video/mp2t"}


class IngestInputError(AllianceError):
    """A source that names no recording, or one the launcher cannot read."""


@dataclass(frozen=True)
class RecordingRef:
    """A recording to ingest: where its bytes are (a store key, or a local path) and what the contract says."""

    source: str
    local: bool  # True: `source` and the sensor paths are local files; False: store keys
    partner: str
    delivery: str
    recording_id: str = ""  # sha256; computed by the pipeline when empty
    sensors: tuple[SensorSpec, ...] = ()
    meta_json: str = "{}"
    bytes: int = 0  # size of the recording, to size the clip table's parts


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did; the launching command prints it and records it with the run."""

    run_id: str
    recordings_in: int
    recordings_with_clips: int
    clips_written: int  # rows in the clip table
    clip_files_new: int  # objects written this run (0 on a re-run)
    rejections: dict[str, int]  # reason -> count
    clip_table_prefix: str
    rejection_table_prefix: str
    seconds: float
    clips_per_partner: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def progress_prefix(run: str) -> str:
    return f"tables/ingest-work/{run}/progress"


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
        return ref.source, ref.sensors
    return copies.path(ref.source), tuple(replace(s, path=copies.path(s.path), label=s.label or s.path)
                                          for s in ref.sensors)


def _rejection(key: str, error: DecodeError) -> Rejection:
    return Rejection(key, "decode", error.reason, str(error))


# --------------------------------------------------------------------------- DoFns: thin wrappers


class PlanRecording(beam.DoFn):
    """A recording -> (ref, window task) per clip window; a recording that gives none -> a tagged rejection."""

    def __init__(self, settings: Settings, config: ClipConfig, run: str):
        self.settings, self.config, self.run = settings, config, run

    def setup(self) -> None:
        self.store = open_store(settings=self.settings)
        self.copies = LocalCopies(self.store)
        self.progress = ProgressWriter(self.store, progress_prefix(self.run))

    def process(self, ref: RecordingRef):
        count(NAMESPACE, "recordings_in")
        windows = 0
        try:
            path, sensors = _resolve(self.copies, ref)
            recording_id = ref.recording_id or sha256_file(path)
            info = RecordingInfo(recording_id, ref.partner, ref.delivery, ref.source, meta_json=ref.meta_json)
            for item in plan_recording(path, info, sensors, self.config):
                if isinstance(item, Refusal):
                    count(NAMESPACE, f"rejected_{item.reason}")
                    yield beam.pvalue.TaggedOutput("rejected",
                                                   Rejection(item.key, item.stage, item.reason, item.detail))
                    continue
                windows += 1
                yield ref, item
        except DecodeError as e:
            count(NAMESPACE, f"rejected_{e.reason}")
            self.progress.add(recordings_refused=1, **{f"rejected_{e.reason}": 1})
            yield beam.pvalue.TaggedOutput("rejected", _rejection(ref.source, e))
        except (KeyNotFound, OSError) as e:
            count(NAMESPACE, "rejected_missing_file")
            self.progress.add(recordings_refused=1, rejected_missing_file=1)
            yield beam.pvalue.TaggedOutput("rejected", Rejection(
                ref.source, "decode", "missing_file", f"{ref.source}: cannot be read ({e}); check that the upload "
                                                      f"completed and the path is right"))
        except StoreError:
            raise  # the store itself failed: Beam retries the bundle, the recording is not at fault
        except Exception as e:  # an unforeseen failure costs this recording only, and is recorded with its cause
            count(NAMESPACE, "rejected_ingest_error")
            self.progress.add(recordings_refused=1, rejected_ingest_error=1)
            yield beam.pvalue.TaggedOutput("rejected", Rejection(
                ref.source, "decode", "ingest_error", f"{ref.source}: {type(e).__name__}: {e}; ingest could not "
                                                      f"handle this file: report it with the file attached"))
        count(NAMESPACE, "windows_planned", windows)
        if windows:
            self.progress.add(recordings_planned=1, windows_planned=windows,
                              **{f"planned/{info.recording_id}": windows})

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
            path = ref.source if ref.local else self.copies.path(ref.source)
            outputs, refusals = run_bounded(cut_window, (replace(task, path=path), workdir), path=ref.source,
                                            timeout_s=self.config.window_timeout_s,
                                            memory_limit_mb=self.config.memory_limit_mb)
        except DecodeError as e:
            count(NAMESPACE, f"rejected_{e.reason}")
            self.progress.add(windows_done=1, **{f"rejected_{e.reason}": 1,
                                                 f"done/{task.recording.recording_id}": 1})
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
                          **{f"done/{task.recording.recording_id}": 1},
                          **{f"rejected_{reason}": n for reason, n in Counter(r.reason for r in refusals).items()})

    def finish_bundle(self) -> None:
        self.progress.flush()


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, refs: Sequence[RecordingRef], run: str,
                   config: ClipConfig, overwrite: bool = False, parts: int = 4) -> None:
    """Recordings -> planned windows -> (reshuffled, so one long recording spreads over workers) -> clips."""
    planned = (pipeline
               | "Recordings" >> beam.Create(list(refs))
               | "SpreadRecordings" >> beam.Reshuffle()
               | "Plan" >> beam.ParDo(PlanRecording(settings, config, run)).with_outputs("rejected", main="windows"))
    clips = (planned.windows
             | "SpreadWindows" >> beam.Reshuffle()
             | "Cut" >> beam.ParDo(IngestWindow(settings, config, run, overwrite)).with_outputs("rejected",
                                                                                                main="rows"))
    _ = clips.rows | "ClipTable" >> WriteParts(settings, table_prefix("clips", run), CLIP_SCHEMA, "clip_id", parts)
    _ = ((planned.rejected, clips.rejected) | "AllRejections" >> beam.Flatten()
         | "RejectionTable" >> WriteRejections(settings, run, parts))


# --------------------------------------------------------------------------- sources


def refs_from_folder(folder: Path, partner: str) -> list[RecordingRef]:
    """Video files under a local folder (sorted); a `{stem}.{stream}.csv` beside one is its sensor stream."""
    folder = folder.resolve()
    delivery = f"folder-{hashlib.sha1(f'{partner}:{folder}'.encode()).hexdigest()[:12]}"
    refs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                       and p.suffix.lower() in VIDEO_SUFFIXES):
        sensors = tuple(_sidecar_sensor(csv, path) for csv in sorted(path.parent.glob(f"{path.stem}.*.csv")))
        meta = {"source": str(path), "delivery": delivery, "partner": partner}
        refs.append(RecordingRef(str(path), True, partner, delivery, sensors=sensors,
                                 meta_json=json.dumps(meta, sort_keys=True), bytes=path.stat().st_size))
    return refs


def _sidecar_sensor(csv: Path, video: Path) -> SensorSpec:
    stream = csv.name[len(video.stem) + 1:-len(".csv")]
    with open(csv, encoding="utf-8", errors="replace") as f:
        columns = tuple(name.strip() for name in f.readline().strip().split(","))
    return SensorSpec(stream=stream, path=str(csv), format="csv", columns=columns, rate_hz=100.0,
                      timestamp="t" if "t" in columns else columns[0])


def refs_from_prefix(store: ObjectStore, prefix: str, partner: str) -> list[RecordingRef]:
    """Video objects under a store prefix (key order); `{stem}.{stream}.csv` siblings are not read here."""
    found = [o for o in store.list(prefix) if Path(o.key).suffix.lower() in VIDEO_SUFFIXES]
    delivery = f"prefix-{hashlib.sha1(f'{partner}:{store.url}/{prefix}'.encode()).hexdigest()[:12]}"
    return [RecordingRef(o.key, False, partner, delivery,
                         meta_json=json.dumps({"source": o.key, "delivery": delivery, "partner": partner},
                                              sort_keys=True), bytes=o.size) for o in found]


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


def resolve_source(settings: Settings, store: ObjectStore, source: str, partner: str = "local") -> list[RecordingRef]:
    """'catalog' | a local folder | a store prefix -> the recordings to ingest."""
    if source == "catalog":
        refs = refs_from_catalog(settings, store)
        where = "the catalog has no accepted recording; deliver some first (`alliance deliver`)"
    elif Path(source).expanduser().is_dir():
        refs = refs_from_folder(Path(source).expanduser(), partner)
        where = f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder"
    else:
        prefix = source.removeprefix("store:")
        refs = refs_from_prefix(store, prefix, partner)
        where = (f"{store.describe(prefix)}: no video objects under this store prefix (and no local folder of that "
                 f"name)")
    if not refs:
        raise IngestInputError(where)
    return refs


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
    store = open_store(settings=settings)
    refs = resolve_source(settings, store, source, partner)
    started, started_at = time.perf_counter(), datetime.now(timezone.utc)
    clips_prefix, rejections_prefix = table_prefix("clips", run_id), table_prefix("rejections", run_id)
    for prefix in (clips_prefix, rejections_prefix, progress_prefix(run_id)):
        clear_prefix(store, prefix)
    if record:
        _record_run(settings, run_id, "running", config, source, {}, started_at)
    pipeline = beam.Pipeline(options=pipeline_options(settings, beam_flags))
    parts = parts or max(4, -(-sum(ref.bytes for ref in refs) // BYTES_PER_PART))
    build_pipeline(pipeline, settings, refs, run_id, config, overwrite, parts)
    try:
        with worker_output_to(worker_log_path(settings, "ingest", run_id)):
            result = _run_with_progress(pipeline, store, run_id, len(refs), on_progress)
    except BaseException:
        if record:
            _record_run(settings, run_id, "failed", config, source, {}, started_at)
        raise
    metrics = counters(result, NAMESPACE)
    ensure_part(store, clips_prefix, CLIP_SCHEMA)
    ensure_part(store, rejections_prefix, REJECTION_SCHEMA)
    clips = read_table(store, clips_prefix, CLIP_SCHEMA)
    rejections = read_table(store, rejections_prefix, REJECTION_SCHEMA).to_pylist()
    write_jsonl(store, f"{rejections_prefix}/rejections.jsonl", sorted(rejections, key=lambda r: r["key"]))
    clear_prefix(store, f"tables/ingest-work/{run_id}")
    summary = IngestSummary(
        run_id=run_id, recordings_in=len(refs),
        recordings_with_clips=len(set(clips.column("recording_id").to_pylist())),
        clips_written=clips.num_rows, clip_files_new=int(metrics.get("clip_files_new", 0)),
        rejections=dict(sorted(Counter(r["reason"] for r in rejections).items())),
        clip_table_prefix=clips_prefix, rejection_table_prefix=rejections_prefix,
        seconds=round(time.perf_counter() - started, 3),
        clips_per_partner=dict(sorted(Counter(clips.column("partner").to_pylist()).items())))
    if record:
        _record_clips(settings, store, run_id, refs, clips)
        _record_run(settings, run_id, "succeeded", config, source, summary.to_json(), started_at)
    return summary


def _run_with_progress(pipeline: beam.Pipeline, store: ObjectStore, run_id: str, recordings: int,
                       on_progress: Callable[[dict[str, int], int], None] | None):
    """Run the job in a thread (the local runner blocks) and poll the progress objects the workers write."""
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
            on_progress(progress_view(read_progress(store, progress_prefix(run_id))), recordings)
    if "error" in outcome:
        raise outcome["error"]
    if on_progress is not None:
        on_progress(progress_view(read_progress(store, progress_prefix(run_id))), recordings)
    return outcome["result"]


def progress_view(counts: Counter) -> dict[str, int]:
    """The workers' raw counts -> what a person follows: recordings done (every window through, or refused),
    windows planned and done, clips written, rejections by reason."""
    view = {k: v for k, v in counts.items() if "/" not in k}
    planned = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("planned/")}
    done = sum(1 for rid, n in planned.items() if counts.get(f"done/{rid}", 0) >= n)
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
            session.merge(Run(id=run_id, kind="ingest", status=status, config={"source": source, **config.to_json()},
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
                size = os.path.getsize(ref.source) if ref.local else store.size(ref.source)
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

"""Launching an ingest run: resolve the source, run the Beam job with progress, account for every recording, and
record the run and its clips in the catalog."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import apache_beam as beam

from alliance.errors import InvalidKey
from alliance.runs import recorded_run
from alliance.settings import Settings
from alliance.store import ObjectStore, open_store, validate_key
from alliance.tables import CLIP_SCHEMA, REJECTION_SCHEMA, Rejection
from ingest.clips import ClipConfig
from pipelines.ingest_graph import NAMESPACE, OUTCOME_SCHEMA, build_pipeline, progress_prefix, work_prefix
from pipelines.sinks import clear_prefix, counters, ensure_part, read_progress, read_table, table_prefix, write_jsonl
from pipelines.sources import MEDIA_TYPES, IngestInputError, RecordingRef, printable_path, resolve_source

BYTES_PER_PART = 64 << 30  # ~64 GB of partner video gives some 10^4 clip rows: one parquet part


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


def run_ingest(settings: Settings, source: str, run_id: str, beam_flags: Sequence[str] = (), *,
               partner: str = "local", config: ClipConfig = ClipConfig(), overwrite: bool = False,
               record: bool = True, on_progress: Callable[[dict[str, int], int], None] | None = None,
               parts: int = 0) -> IngestSummary:
    """Ingest `source` ('catalog', a local folder or a store prefix) as run `run_id`; records the run afterwards.

    on_progress(counts, recordings_in) is called about once a second while the job runs. parts: files of the clip
    table (0: one per BYTES_PER_PART of source video, at least 4), so no worker holds more than a part's rows.
    """
    validate_key(f"tables/clips/{run_id}")
    try:
        validate_key(f"clips/{partner}")
    except InvalidKey as e:
        raise IngestInputError(f"partner {printable_path(partner)}: not usable in clip keys ({e})") from e
    store = open_store(settings=settings)
    found = resolve_source(settings, store, source, partner)
    started = time.perf_counter()
    for prefix in (table_prefix("clips", run_id), table_prefix("rejections", run_id), work_prefix(run_id)):
        clear_prefix(store, prefix)
    with recorded_run(settings.effective_catalog_url if record else None, run_id, "ingest",
                      {"source": printable_path(source), **config.to_json()}) as run:
        summary, clips = _ingest(settings, store, found, run_id, beam_flags, config, overwrite, on_progress, parts,
                                 started)
        if record:
            _record_clips(settings, store, run_id, found.refs, clips)
        run.summary = summary.to_json()
    return summary


def _ingest(settings: Settings, store: ObjectStore, found, run_id: str, beam_flags: Sequence[str], config: ClipConfig,
            overwrite: bool, on_progress, parts: int, started: float):
    """The Beam job and its accounting, for run_ingest: (summary, clip table)."""
    from pipelines.options import credentials_for_local_workers, pipeline_options, worker_log_path, worker_output_to

    refs, launcher_refused = found.refs, found.refused + found.side_refused
    clips_prefix, rejections_prefix = table_prefix("clips", run_id), table_prefix("rejections", run_id)
    pipeline = beam.Pipeline(options=pipeline_options(settings, beam_flags))
    parts = parts or max(4, -(-sum(ref.bytes for ref in refs) // BYTES_PER_PART))
    build_pipeline(pipeline, settings.store_address(), refs, run_id, config, overwrite, parts, launcher_refused)
    already = Counter({"recordings_refused": len(found.refused),
                       **Counter(f"rejected_{r.reason}" for r in launcher_refused)})
    with credentials_for_local_workers(settings), worker_output_to(worker_log_path(settings, "ingest", run_id)):
        result = _run_with_progress(pipeline, store, run_id, len(refs) + len(found.refused), on_progress, already)
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
    return summary, clips


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

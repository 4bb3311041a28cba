"""`alliance pipeline curate`: clip tables in, a selection table out (Beam analyses clips, then global verdicts)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from alliance.errors import AllianceError, KeyNotFound
from alliance.settings import Settings, StoreAddress
from alliance.store import ObjectStore, open_store
from alliance.tables import CLIP_SCHEMA, REJECTION_SCHEMA, SELECTION_SCHEMA, Rejection
from curation.embed import EncoderSpec, clip_tensor, load_encoder_spec
from curation.index_store import commit_segment, load_index
from curation.select import CurateConfig, analyze_clip
from curation.verdicts import (CANDIDATE_COLUMNS, Gathered, decide, dropped_counts, gather, recording_source,
                               selection_table, tally)
from pipelines.sinks import DEAD_LETTERS, dead_letter_detail, under_contract

log = logging.getLogger(__name__)

WORK_SCHEMA = pa.schema([
    *CLIP_SCHEMA,
    ("signals", pa.string()), ("content_hash", pa.string()), ("signature", pa.binary()),
    ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("embedding", pa.list_(pa.float32())),
])


class CurationInputError(AllianceError):
    """The clip table to curate is missing or unreadable."""


@dataclass(frozen=True)
class CurateSummary:
    """What one curation run did: clips in, kept, dropped per stage and reason, where its outputs are."""

    run: str
    clips_run: str
    clips_in: int
    kept: int
    dropped: dict[str, dict[str, int]]
    selection_prefix: str
    rejections_key: str
    report_key: str
    index_key: str
    semantic: str  # what the semantic stages did, or why they were skipped
    seconds: float = 0.0
    per_partner: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def work_prefix(run: str) -> str:
    return f"tables/curation-work/{run}"


def _shard(clip_id: str, shards: int) -> int:
    return int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) % shards


def read_parquet(store: ObjectStore, key: str, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(store.get_bytes(key)), columns=list(columns) if columns else None)
    except pa.ArrowInvalid as e:
        raise CurationInputError(f"{store.describe(key)}: not a readable parquet table ({e}); re-run the stage "
                                 f"that wrote it") from e


def write_parquet(store: ObjectStore, key: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.put_bytes(key, buffer.getvalue())


# --------------------------------------------------------------------------- Beam: per-clip work


class ReadClipRows(beam.DoFn):
    """A clip table part -> its rows."""

    def __init__(self, settings: Settings | StoreAddress):
        self.store_address = StoreAddress.of(settings)  # never a secret: workers bring their own

    def setup(self) -> None:
        self.store = self.store_address.open()

    def process(self, key: str) -> Iterator[dict[str, Any]]:
        yield from read_parquet(self.store, key).to_pylist()


class AnalyzeClip(beam.DoFn):
    """Decode a clip once: quality signals and verdict, decoded-content hash, near-dup signature, encoder input."""

    def __init__(self, settings: Settings | StoreAddress, cfg: CurateConfig, spec: EncoderSpec | None, shards: int):
        self.store_address, self.cfg, self.spec, self.shards = StoreAddress.of(settings), cfg, spec, shards

    def setup(self) -> None:
        self.store = self.store_address.open()

    @under_contract  # a store that fails is retried; what analysis did not foresee is a dead letter (AnalysisFailed)
    def process(self, row: dict[str, Any]):
        data: bytes | None = None
        if (row.get("status") or "ingested") == "ingested":
            try:
                data = self.store.get_bytes(row["clip_key"])
            except KeyNotFound:
                data = None
        analysis, clip = analyze_clip(row, data, self.cfg)  # a clip that does not decode is refused there, as data
        work = analysis.work_columns()
        Metrics.counter("curation", work["reason"] or "analyzed").inc()
        yield _shard(row["clip_id"], self.shards), ("row", {**row, **work})
        if self.spec is not None and clip is not None:  # quality drops too: new thresholds need no re-embedding
            yield beam.pvalue.TaggedOutput("embed", (row["clip_id"], clip_tensor(clip.frames, self.spec)))


def analysis_failed(letter: tuple, shards: int) -> tuple[int, tuple[str, dict[str, Any]]]:
    """A dead letter of AnalyzeClip -> its work row, refused `analysis_failed` with the traceback as the detail, so
    it reaches the rejection table like any other refused clip."""
    row, failure = letter
    Metrics.counter("curation", "analysis_failed").inc()
    key = row.get("clip_key") or row["clip_id"]
    return _shard(row["clip_id"], shards), ("row", {**row, "stage": "decode", "reason": "analysis_failed",
                                                    "signals": None, "content_hash": "", "signature": None,
                                                    "detail": dead_letter_detail(key, failure)})


class WriteWorkPart(beam.DoFn):
    """One shard of analysed rows (with their embeddings) -> tables/curation-work/{run}/part-NNNNN.parquet."""

    def __init__(self, settings: Settings | StoreAddress, run: str):
        self.store_address, self.run = StoreAddress.of(settings), run

    def setup(self) -> None:
        self.store = self.store_address.open()

    def process(self, element) -> Iterator[int]:
        shard, values = element
        rows: dict[str, list[dict[str, Any]]] = {}
        embeddings: dict[str, list[float]] = {}
        for kind, value in values:
            if kind == "row":
                rows.setdefault(value["clip_id"], []).append(value)
            else:
                embeddings[value[0]] = value[1]
        ordered = []
        for clip_id in sorted(rows):
            # the same recording delivered twice gives the same clip id: the first delivery's row stands
            first, *again = sorted(rows[clip_id], key=lambda r: (r["delivery"] or "", r["partner"] or "",
                                                                 r["clip_key"] or "", recording_source(r)))
            ordered.append(dict(first, embedding=embeddings.get(clip_id)))
            for row in again:
                ordered.append(dict(row, stage="exact_dup", reason="duplicate_recording", embedding=None,
                                    detail=f"{recording_source(row)} ({row['partner']}/{row['delivery']}): the same "
                                           f"bytes as {recording_source(first)} ({first['partner']}/"
                                           f"{first['delivery']}), recording {row['recording_id']}; this upload's "
                                           f"clip {row['clip_id']} is refused, that one's stands"))
        table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in WORK_SCHEMA} for r in ordered],
                                     schema=WORK_SCHEMA)
        write_parquet(self.store, f"{work_prefix(self.run)}/part-{shard:05d}.parquet", table)
        yield len(ordered)


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, clip_parts: list[str], run: str, cfg: CurateConfig,
                   spec: EncoderSpec | None, shards: int):
    rows = (pipeline
            | "ClipTables" >> beam.Create(clip_parts)
            | "ReadRows" >> beam.ParDo(ReadClipRows(settings))
            | "Spread" >> beam.Reshuffle())
    analysed = rows | "Analyze" >> beam.ParDo(AnalyzeClip(settings, cfg, spec, shards)).with_outputs(
        "embed", main="rows").with_exception_handling(**DEAD_LETTERS)
    branches = [analysed.rows, analysed.dead | "AnalysisFailed" >> beam.Map(analysis_failed, shards)]
    if spec is not None:
        from pipelines.embed_handler import EmbedClips  # torch only when embeddings are asked for

        vectors = analysed.embed | "Embed" >> EmbedClips(settings, spec)
        branches.append(vectors | "KeyEmbeddings" >> beam.Map(lambda kv, n: (_shard(kv[0], n), ("embedding", kv)),
                                                             shards))
    return (branches
            | "Merge" >> beam.Flatten()
            | "ByShard" >> beam.GroupByKey()
            | "WriteWork" >> beam.ParDo(WriteWorkPart(settings, run)))


# --------------------------------------------------------------------------- after the job: global verdicts


def _work_parts(store: ObjectStore, run: str) -> list[str]:
    return [o.key for o in store.list(f"{work_prefix(run)}/") if o.key.endswith(".parquet")]


def _accepted_times(settings: Settings, recording_ids: set[str]) -> dict[str, str]:
    """Acceptance time of each recording from the catalog (the keep rule's first key); empty if none is recorded."""
    from sqlalchemy import select

    from alliance.catalog import Catalog
    from alliance.errors import CatalogError
    from alliance.models import Recording

    catalog = Catalog(settings.effective_catalog_url)
    found: dict[str, str] = {}
    try:
        catalog.ensure_current()
        ids = sorted(recording_ids)
        with catalog.session() as session:
            for start in range(0, len(ids), 500):
                query = select(Recording.id, Recording.accepted_at).where(Recording.id.in_(ids[start:start + 500]))
                found.update({rid: at.isoformat() for rid, at in session.execute(query)})
    except CatalogError as e:
        log.warning("keep order without catalog acceptance times: %s", e)
    finally:
        catalog.dispose()
    return found


def _candidates(settings: Settings, store: ObjectStore, parts: list[str], cfg: CurateConfig) -> Gathered:
    """One pass over the work table: what the global stages need of each clip, in keep order terms."""
    return gather((row for key in parts for row in read_parquet(store, key, CANDIDATE_COLUMNS).to_pylist()), cfg)


def _embedding_batches(store: ObjectStore, parts: list[str]):
    def batches():
        for key in parts:
            table = read_parquet(store, key, ["clip_id", "embedding"])
            table = table.filter(pa.compute.is_valid(table["embedding"]))
            if table.num_rows == 0:
                continue
            ids = table["clip_id"].to_pylist()
            flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            yield ids, flat.astype(np.float32).reshape(len(ids), -1)
    return batches


def finalize(settings: Settings, store: ObjectStore, clips_run: str, run: str, cfg: CurateConfig,
             spec: EncoderSpec | None, started: float) -> CurateSummary:
    """Keep order, exact and near duplicates against the stored index, the semantic stages, then the index
    segment (committed first), the selection table, the rejections and the report."""
    from curation.report import ReportInput, write_report

    parts = _work_parts(store, run)
    gathered = _candidates(settings, store, parts, cfg)
    candidates, signals, repeats = (gathered.in_keep_order(_accepted_times(settings, gathered.recordings)),
                                    gathered.signals, gathered.repeats)
    index = load_index(store, cfg.index, cfg.neardup, before_run=run)
    decision = decide(candidates, index, cfg, spec.name if spec is not None else None,
                      _embedding_batches(store, parts))
    verdicts, semantic, semantic_note = decision.verdicts, decision.semantic, decision.semantic_note

    # the index commit comes first: a run that lost a race to another writes nothing; a re-run after a later
    # failure finds its own commit and decides the same again
    index_key = commit_segment(store, cfg.index, run, index.live_segment(), seen=index.committed)
    selection_prefix = f"tables/selections/{run}"
    for old in store.list(f"{selection_prefix}/"):
        store.delete(old.key)
    rejections: list[Rejection] = list(repeats)
    partners: dict[str, Counter] = {}
    if not parts:  # an empty clip table still gives a (empty) selection, so the next stage finds its input
        write_parquet(store, f"{selection_prefix}/part-00000.parquet", SELECTION_SCHEMA.empty_table())
    for i, key in enumerate(parts):
        selection = selection_table(read_parquet(store, key), verdicts)
        write_parquet(store, f"{selection_prefix}/part-{i:05d}.parquet", selection)
        rejections.extend(tally(selection, verdicts, partners))
    rejections_key = f"tables/rejections/{run}/part-00000.parquet"
    write_parquet(store, rejections_key, pa.Table.from_pylist([r.to_dict() for r in rejections],
                                                              schema=REJECTION_SCHEMA))

    dropped = dropped_counts(verdicts, repeats)
    kept = sum(v.kept for v in verdicts.values())
    report_key = f"reports/curation/{run}/index.html"
    summary = CurateSummary(run, clips_run, len(verdicts) + len(repeats), kept, dropped, selection_prefix,
                            rejections_key, report_key, index_key, semantic_note,
                            round(time.perf_counter() - started, 2),
                            {p: dict(c) for p, c in sorted(partners.items())})
    write_report(store, ReportInput(run=run, clips_run=clips_run, config=cfg, summary=summary.to_json(),
                                    candidates=candidates, verdicts=verdicts, signals=signals, semantic=semantic,
                                    index_keys=index.keys, partners=summary.per_partner, repeats=len(repeats)))
    store.put_bytes(f"reports/curation/{run}/summary.json", json.dumps(summary.to_json(), indent=1).encode())
    store.put_bytes(f"reports/curation/{run}/config.json", json.dumps(cfg.to_json(), indent=1, default=list).encode())
    return summary


# --------------------------------------------------------------------------- entry point


def run_curate(settings: Settings, clips_run: str, run_id: str, encoder_run: str | None = None,
               beam_flags: Sequence[str] = (), config: CurateConfig = CurateConfig(), shards: int = 4,
               record: bool = True, reuse_analysis: bool = False) -> CurateSummary:
    """Curate the clip table of ingest run `clips_run` into tables/selections/{run_id}/ and its report.

    reuse_analysis: when this run already analysed the same clip table with the same encoder, skip the Beam job
    and decide again from the stored signals, hashes and embeddings (new thresholds without re-decoding)."""
    from alliance.runs import recorded_run
    from pipelines.options import credentials_for_local_workers, pipeline_options, worker_log_path, worker_output_to

    started = time.perf_counter()
    store = open_store(settings=settings)
    clip_parts = [o for o in store.list(f"tables/clips/{clips_run}/") if o.key.endswith(".parquet")]
    if not clip_parts:
        raise CurationInputError(f"{store.describe(f'tables/clips/{clips_run}')}/: no clip table parts; run "
                                 f"`alliance pipeline ingest` first or check the run id")
    spec = load_encoder_spec(store, encoder_run) if encoder_run else None
    inputs = json.dumps({"clips": [[o.key, o.size] for o in clip_parts], "encoder": encoder_run,
                         "signature": [config.neardup.sample_fps, config.neardup.phases, list(config.neardup.scales)]},
                        sort_keys=True)
    inputs_key = f"{work_prefix(run_id)}/inputs.json"
    reusable = reuse_analysis and store.exists(inputs_key) and store.get_bytes(inputs_key).decode() == inputs
    # the launcher, not the workers, records the run: running, then failed (with the error) or succeeded
    with recorded_run(settings.effective_catalog_url if record else None, run_id, "curate",
                      {"clips_run": clips_run, "encoder_run": encoder_run, **config.to_json()}) as run:
        if not reusable:
            for old in store.list(f"{work_prefix(run_id)}/"):
                store.delete(old.key)
            worker_log = worker_log_path(settings, "curate", run_id)
            with credentials_for_local_workers(settings), worker_output_to(worker_log), \
                    beam.Pipeline(options=pipeline_options(settings, beam_flags)) as pipeline:
                build_pipeline(pipeline, settings.store_address(), [o.key for o in clip_parts], run_id, config, spec,
                               shards)
            store.put_bytes(inputs_key, inputs.encode())
        summary = finalize(settings, store, clips_run, run_id, config, spec, started)
        run.summary = summary.to_json()
    return summary

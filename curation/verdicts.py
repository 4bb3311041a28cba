"""A curation run's verdicts as plain data: its work rows as candidates in keep order, the duplicate and semantic
stages, and each clip's selection row; pipelines/curate.py reads and writes the tables around them."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Iterable

import pyarrow as pa

from alliance.tables import CLIP_SCHEMA, SELECTION_SCHEMA, Rejection
from curation.neardup import NearDupIndex
from curation.quality import QualitySignals
from curation.select import (Candidate, CurateConfig, EmbeddingBatches, SemanticOutcome, Verdict, accepted_at,
                             decide_duplicates, keep_order, merge, requalify, semantic_stage)
from curation.signature import Signature

# what the global stages read of each work row
CANDIDATE_COLUMNS = ["clip_id", "clip_key", "recording_id", "delivery", "recording_meta", "source_width",
                     "source_height", "t1", "signals", "content_hash", "signature", "stage", "reason", "detail"]


def recording_source(row: dict[str, Any]) -> str:
    """The upload a clip row came from (the file or store key its recording was read from), for messages."""
    try:
        meta = json.loads(row.get("recording_meta") or "{}")
    except json.JSONDecodeError:
        meta = {}
    source = meta.get("source") if isinstance(meta, dict) else None
    return str(source or row.get("clip_key") or row.get("clip_id"))


def is_repeat(row: dict[str, Any]) -> bool:
    """A second delivery of a recording already in this run: rejected, but not a row of the selection."""
    return row["stage"] == "exact_dup" and row["reason"] == "duplicate_recording"


@dataclass
class Gathered:
    """One pass over the work rows: each clip's candidate with what its keep order needs, its quality signals, and
    the repeated deliveries (refused, not candidates)."""

    found: list[tuple[str, dict[str, Any], QualitySignals | None, Candidate]]
    signals: dict[str, QualitySignals]
    repeats: list[Rejection]

    @property
    def recordings(self) -> set[str]:
        return {recording for recording, *_ in self.found}

    def in_keep_order(self, accepted: dict[str, str]) -> list[Candidate]:
        """The candidates with their keep order, `accepted` giving when each recording was accepted (the catalog's
        word; the contract metadata's where it has none)."""
        return [replace(c, order=keep_order(ordering, s, accepted.get(recording) or ordering["accepted_at"]))
                for recording, ordering, s, c in self.found]


def gather(rows: Iterable[dict[str, Any]], cfg: CurateConfig) -> Gathered:
    """The work rows (CANDIDATE_COLUMNS) as candidates, their quality verdicts taken again under cfg.quality."""
    found: list[tuple[str, dict[str, Any], QualitySignals | None, Candidate]] = []
    signals: dict[str, QualitySignals] = {}
    repeats: list[Rejection] = []
    for row in rows:
        if is_repeat(row):
            repeats.append(Rejection(row["clip_key"] or row["clip_id"], row["stage"], row["reason"], row["detail"]))
            continue
        s = QualitySignals.from_json(row["signals"]) if row["signals"] else None
        if s is not None:
            signals[row["clip_id"]] = s
        sig = Signature.from_bytes(row["signature"]) if row["signature"] else None
        stage, reason, detail = requalify(row["stage"], row["reason"], row["detail"], s, row["clip_key"] or "",
                                          cfg.quality)
        ordering = {"clip_id": row["clip_id"], "delivery": row["delivery"], "accepted_at": accepted_at(row),
                    "source_width": row["source_width"], "source_height": row["source_height"]}
        found.append((row["recording_id"], ordering, s,
                      Candidate(row["clip_id"], row["clip_key"] or "", (), row["content_hash"] or "", sig, stage,
                                reason, detail, t1=row["t1"], source=recording_source(row))))
    return Gathered(found, signals, repeats)


@dataclass(frozen=True)
class Decision:
    """Every candidate's verdict, the semantic stage's outcome (None without an encoder) and a line about it."""

    verdicts: dict[str, Verdict]
    semantic: SemanticOutcome | None
    semantic_note: str


def decide(candidates: list[Candidate], index: NearDupIndex, cfg: CurateConfig, encoder: str | None,
           embeddings: EmbeddingBatches) -> Decision:
    """Exact and near duplicates against the index (which gains the kept clips), then, with an encoder, the
    semantic stages over the survivors in keep order."""
    verdicts = decide_duplicates(candidates, index)
    semantic: SemanticOutcome | None = None
    if encoder is None:
        semantic_note = "skipped: no encoder given (--encoder CHECKPOINT_RUN); every clip has cluster -1"
    else:
        ranked = sorted((c for c in candidates if verdicts[c.clip_id].kept), key=lambda c: c.order)
        order = {c.clip_id: rank for rank, c in enumerate(ranked)}
        semantic = semantic_stage(order, embeddings, cfg.semantic)
        verdicts = merge(verdicts, semantic)
        balance = f"balanced to {cfg.semantic.target} clips" if cfg.semantic.target else "no balancing target"
        cosines = "centred cosines" if cfg.semantic.center else "cosines"
        semantic_note = (f"encoder {encoder}: {semantic.clusters} clusters, SemDeDup eps {cfg.semantic.eps} "
                         f"({cosines}), {balance}")
    return Decision(verdicts, semantic, semantic_note)


def selection_table(table: pa.Table, verdicts: dict[str, Verdict]) -> pa.Table:
    """A work part's clips, less the repeated deliveries, as selection rows (SELECTION_SCHEMA) with their verdicts."""
    table = table.filter(pa.compute.invert(pa.compute.and_(
        pa.compute.equal(table["stage"].fill_null(""), "exact_dup"),
        pa.compute.equal(table["reason"].fill_null(""), "duplicate_recording"))))
    ids = table["clip_id"].to_pylist()
    signals = table["signals"].to_pylist()
    hashes = table["content_hash"].to_pylist()
    chosen = [verdicts[c] for c in ids]
    quality = []
    for s, h, v in zip(signals, hashes, chosen):
        entry = json.loads(s) if s else {}
        entry.update({"content_hash": h, "detail": v.detail})
        if v.distance is not None:
            entry["near_dup_distance"] = round(v.distance, 3)
        quality.append(json.dumps(entry, sort_keys=True))
    columns = {f.name: table[f.name] for f in CLIP_SCHEMA}
    columns.update({
        "kept": pa.array([v.kept for v in chosen], pa.bool_()),
        "drop_stage": pa.array([v.stage for v in chosen], pa.string()),
        "drop_reason": pa.array([v.reason for v in chosen], pa.string()),
        "duplicate_of": pa.array([v.duplicate_of for v in chosen], pa.string()),
        "cluster": pa.array([v.cluster for v in chosen], pa.int32()),
        "quality": pa.array(quality, pa.string()),
    })
    return pa.Table.from_pydict(columns, schema=SELECTION_SCHEMA)


def tally(selection: pa.Table, verdicts: dict[str, Verdict],
          partners: dict[str, Counter]) -> list[Rejection]:
    """Counts each selection row in and kept under its partner (in `partners`); the rejections of the dropped."""
    rejections = []
    for row in selection.select(["clip_id", "clip_key", "partner", "kept"]).to_pylist():
        counts = partners.setdefault(row["partner"], Counter())
        counts["in"] += 1
        counts["kept"] += int(row["kept"])
        if not row["kept"]:
            v = verdicts[row["clip_id"]]
            rejections.append(Rejection(row["clip_key"] or row["clip_id"], v.stage, v.reason,
                                        v.detail or f"{row['clip_key']}: dropped at {v.stage} ({v.reason})"))
    return rejections


def dropped_counts(verdicts: dict[str, Verdict], repeats: list[Rejection]) -> dict[str, dict[str, int]]:
    """{stage: {reason: clips}} of every clip dropped, the repeated deliveries included."""
    dropped: dict[str, dict[str, int]] = {}
    for stage, reason in [(v.stage, v.reason) for v in verdicts.values() if not v.kept] + \
            [(r.stage, r.reason) for r in repeats]:
        dropped.setdefault(stage, {}).setdefault(reason, 0)
        dropped[stage][reason] += 1
    return dropped

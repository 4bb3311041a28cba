"""Curation verdicts as plain data, without Beam: work rows to candidates in keep order, and selection rows."""

from __future__ import annotations

import pyarrow as pa

from alliance.tables import CLIP_SCHEMA, SELECTION_SCHEMA, Rejection
from curation.select import CurateConfig, Verdict
from curation.verdicts import dropped_counts, gather, selection_table, tally


def _work_row(clip_id: str, recording_id: str, **fields) -> dict:
    row = {"clip_id": clip_id, "clip_key": f"clips/p/{recording_id}/{clip_id}.mp4", "recording_id": recording_id,
           "partner": "p", "delivery": "d1", "recording_meta": "{}", "source_width": 64, "source_height": 64,
           "t1": 4.0, "signals": None, "content_hash": f"hash-{clip_id}", "signature": None, "stage": None,
           "reason": None, "detail": None}
    return {**row, **fields}


def test_a_repeated_delivery_is_set_aside_and_the_recording_accepted_first_is_kept_first():
    rows = [_work_row("a", "r1"), _work_row("b", "r2"),
            _work_row("c", "r3", stage="exact_dup", reason="duplicate_recording", detail="the same bytes as r1")]
    gathered = gather(rows, CurateConfig())
    assert gathered.recordings == {"r1", "r2"}
    assert [(r.key, r.reason) for r in gathered.repeats] == [("clips/p/r3/c.mp4", "duplicate_recording")]

    def kept_first(accepted: dict[str, str]) -> list[str]:
        return [c.clip_id for c in sorted(gathered.in_keep_order(accepted), key=lambda c: c.order)]

    assert kept_first({"r1": "2026-01-02T00:00:00", "r2": "2026-01-01T00:00:00"}) == ["b", "a"]
    assert kept_first({"r1": "2026-01-01T00:00:00", "r2": "2026-01-02T00:00:00"}) == ["a", "b"]


def test_selection_rows_carry_each_verdict_and_the_dropped_become_rejections():
    schema = pa.schema([*CLIP_SCHEMA, ("signals", pa.string()), ("content_hash", pa.string()),
                        ("stage", pa.string()), ("reason", pa.string())])
    work = pa.Table.from_pylist([_work_row("a", "r1"), _work_row("b", "r2"),
                                 _work_row("c", "r3", stage="exact_dup", reason="duplicate_recording")], schema=schema)
    verdicts = {"a": Verdict("a", True),
                "b": Verdict("b", False, "near_dup", "near_duplicate", duplicate_of="a", distance=3.25)}
    selection = selection_table(work, verdicts)
    assert selection.schema.equals(SELECTION_SCHEMA)
    assert selection.column("clip_id").to_pylist() == ["a", "b"]  # the repeated delivery is no selection row
    assert selection.column("duplicate_of").to_pylist() == [None, "a"]
    assert '"near_dup_distance": 3.25' in selection.column("quality").to_pylist()[1]

    partners: dict = {}
    rejected = tally(selection, verdicts, partners)
    assert [(r.key, r.stage, r.reason) for r in rejected] == [("clips/p/r2/b.mp4", "near_dup", "near_duplicate")]
    assert {p: dict(c) for p, c in partners.items()} == {"p": {"in": 2, "kept": 1}}
    repeat = Rejection("clips/p/r3/c.mp4", "exact_dup", "duplicate_recording", "")
    assert dropped_counts(verdicts, [repeat]) == {"near_dup": {"near_duplicate": 1},
                                                  "exact_dup": {"duplicate_recording": 1}}

"""Near duplicates: precision/recall on generated copies and hard negatives; the stored index is incremental."""

from __future__ import annotations

from dataclasses import replace

import pytest

from curation.evalset import TRANSFORMS, build_set, camera_frames, encode, evaluate, remux
from curation.media import decode_clip
from curation.neardup import (IndexChanged, NearDupConfig, NearDupIndex, commit_segment, load_index, read_manifest,
                              signature)
from curation.select import Candidate, decide_duplicates


@pytest.fixture(scope="module")
def eval_set():
    return build_set(sources=6, frames=60, other_scenes=2)


def test_precision_and_recall_on_transformed_copies_and_hard_negatives(eval_set):
    result = evaluate(eval_set)
    print(f"near-dup: precision {result.precision:.3f} recall {result.recall:.3f} "
          f"(tp {result.true_positives}, fp {result.false_positives}, fn {result.false_negatives})")
    assert result.true_positives + result.false_negatives == 6 * len(TRANSFORMS)
    assert result.recall >= 0.95, result.misses
    assert result.precision >= 0.99, result.false_matches


def test_precision_and_recall_on_two_second_clips():
    """Short clips (6 samples at 3 fps) have few LSH bands: they need one collision fewer, and still no false match."""
    result = evaluate(build_set(sources=4, frames=20, other_scenes=2))
    assert (result.recall, result.precision) == (1.0, 1.0), (result.misses, result.false_matches)


def test_remux_into_another_container_keeps_the_decoded_content_hash():
    data = encode(camera_frames(3, 20))
    assert decode_clip(remux(data), "a.mkv").content_hash == decode_clip(data, "a.mp4").content_hash
    assert decode_clip(encode(camera_frames(3, 20)[1:]), "b.mp4").content_hash != decode_clip(data, "a.mp4").content_hash


def _candidates(eval_set, names):
    cfg = NearDupConfig()
    out = []
    for rank, clip in enumerate(c for c in eval_set if c.name in names):
        decoded = decode_clip(clip.data, clip.name)
        out.append(Candidate(clip.name, f"clips/p/{clip.name}.mp4", (f"{rank:04d}",), decoded.content_hash,
                             signature(decoded, cfg), None, None, None))
    return out


def test_incremental_index_in_the_store_gives_the_same_answer_as_from_scratch(eval_set, store):
    names = [c.name for c in eval_set]
    everything = _candidates(eval_set, names)
    first, second = everything[: len(everything) // 2], everything[len(everything) // 2:]

    scratch = decide_duplicates(everything, NearDupIndex())

    index = load_index(store, "main", before_run="run-1")
    part1 = decide_duplicates(first, index)
    commit_segment(store, "main", "run-1", index.live_segment(), seen=0)
    index = load_index(store, "main", before_run="run-2")
    assert len(index) == sum(v.kept for v in part1.values())  # old signatures come from the store, not recomputed
    part2 = decide_duplicates(second, index)
    commit_segment(store, "main", "run-2", index.live_segment(), seen=1)

    assert {**part1, **part2} == scratch
    kept = sorted(c for c, v in scratch.items() if v.kept)
    assert all(name in kept for name in names if "-" not in name or "scene" in name)  # originals and other scenes
    dropped = {c: v for c, v in scratch.items() if not v.kept}
    assert {v.reason for v in dropped.values()} == {"near_duplicate", "duplicate_content"}
    assert all(v.duplicate_of == c.split("-")[0] for c, v in dropped.items())
    assert [s["run"] for s in read_manifest(store, "main")["segments"]] == ["run-1", "run-2"]

    # a re-run of run-2 sees only what was there before it, decides the same, and writes nothing new
    again = decide_duplicates(second, load_index(store, "main", before_run="run-2"))
    assert again == part2
    commit_segment(store, "main", "run-2", NearDupIndex().live_segment(), seen=1)
    assert len(read_manifest(store, "main")["segments"]) == 2

    # a run that decided against one segment while another run committed a second must not commit
    with pytest.raises(IndexChanged, match="run-1"):
        commit_segment(store, "main", "run-3", NearDupIndex().live_segment(), seen=0)
    assert [s["run"] for s in read_manifest(store, "main")["segments"]] == ["run-1", "run-2"]


def test_a_clip_accepted_earlier_stays_accepted_and_a_redelivery_elsewhere_is_a_duplicate(eval_set, file_store):
    (original,) = _candidates(eval_set, ["src0"])
    index = load_index(file_store, "main", before_run="r1")
    assert decide_duplicates([original], index)["src0"].kept
    commit_segment(file_store, "main", "r1", index.live_segment(), seen=0)

    again = decide_duplicates([original], load_index(file_store, "main", before_run="r2"))
    assert again["src0"].kept  # the same clip from the same place: a new round, not a duplicate of itself

    elsewhere = replace(original, clip_key="clips/other-partner/src0.mp4")
    moved = decide_duplicates([elsewhere], load_index(file_store, "main", before_run="r2"))["src0"]
    assert (moved.kept, moved.reason, moved.duplicate_of) == (False, "duplicate_recording", "src0")
    assert "clips/p/src0.mp4" in moved.detail

"""Near duplicates: precision/recall on generated copies and hard negatives; the stored index is incremental."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from curation.evalset import TRANSFORMS, build_set, camera_frames, encode, evaluate, remux
from curation.index_store import IndexChanged, commit_segment, load_index, read_manifest
from curation.media import decode_clip
from curation.neardup import LIVE_BATCH, NearDupIndex, Segment
from curation.select import Candidate, decide_duplicates
from curation.signature import HASH_BITS, NearDupConfig, Signature, _dct_matrix, signature


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


def test_the_dct_matrix_is_kept_per_size():
    """Regression: the cached DCT matrix was the first size asked for, whatever size was asked later."""
    small, large = _dct_matrix(8), _dct_matrix(32)
    assert small.shape == (8, 8) and large.shape == (32, 32)
    assert np.allclose(small @ small.T, np.eye(8)) and np.allclose(large @ large.T, np.eye(32))
    assert _dct_matrix(8) is small


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


def _random_clips(n: int, frames: int, seed: int) -> list[np.ndarray]:
    """Plain hashes [2 scales, frames] of n unrelated clips (random; no PyAV needed to exercise the index)."""
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 1 << HASH_BITS, size=(n, 2, frames), dtype=np.uint64))


def _query_of(plain: np.ndarray, flipped: int, seed: int) -> Signature:
    """A query whose phase-0 plain view is `plain` with `flipped` random bits changed per hash; other views random."""
    rng = np.random.default_rng(seed)
    views = rng.integers(0, 1 << HASH_BITS, size=(4, 2, *plain.shape), dtype=np.uint64)
    near = plain.copy()
    for _ in range(flipped):
        near ^= np.uint64(1) << rng.integers(0, HASH_BITS, size=near.shape).astype(np.uint64)
    views[0, 0] = near
    return Signature(views)


@pytest.mark.parametrize("band_bits", [20, 14])  # sparse tables (sorted keys) and dense ones (a directory)
def test_clips_added_in_one_run_are_frozen_and_merged_yet_answer_like_one_segment(band_bits):
    """A run adding more than LIVE_BATCH clips keeps them in merged in-memory segments: the answers, the order
    of the persisted segment and its band table equal those of one segment built from all of them at once."""
    cfg = replace(NearDupConfig(), band_bits=band_bits)
    plains = _random_clips(2 * LIVE_BATCH + 300, 10, seed=5)
    index = NearDupIndex(cfg)
    for i, plain in enumerate(plains):
        index.add(f"c{i}", f"h{i}", Signature(np.broadcast_to(plain, (4, 2, *plain.shape))))
    whole = Segment.build([f"c{i}" for i in range(len(plains))], [f"h{i}" for i in range(len(plains))],
                          [""] * len(plains), plains, cfg)
    frozen = NearDupIndex(cfg, [whole])
    assert len(index) == len(plains)
    assert (whole.shift > 0, whole.keys is not None) == (band_bits == 20,) * 2
    for probe in (0, LIVE_BATCH - 1, LIVE_BATCH, 2 * LIVE_BATCH + 5, len(plains) - 1):
        sig = _query_of(plains[probe], 3, seed=probe)
        assert index.query(sig) == frozen.query(sig)
        assert index.query(sig).clip_id == f"c{probe}"
    assert index.query(Signature(_random_clips(8, 10, seed=6)[0][None, None].repeat(4, 0).repeat(2, 1))) is None
    live = index.live_segment()
    assert live.clip_ids == whole.clip_ids
    assert np.array_equal(live.entries, whole.entries) and np.array_equal(live.sorted_keys(), whole.sorted_keys())


def test_a_segment_stored_with_other_bands_or_by_format_1_is_reindexed_from_its_signatures():
    """The band table depends on the band layout; the stored signatures do not. A segment written with another
    layout, or by format 1 (four fixed bands, no layout stored), is re-banded on load, answering as a new one."""
    cfg = NearDupConfig()
    plains = _random_clips(300, 10, seed=7)
    ids = [f"c{i}" for i in range(len(plains))]
    fresh = Segment.build(ids, ids, ids, plains, cfg)
    other = Segment.build(ids, ids, ids, plains, replace(cfg, bands=4, band_bits=16))
    old = io.BytesIO()  # what format 1 wrote: no format, no band layout, uint64 keys of four 16-bit bands
    np.savez(old, clip_ids=np.asarray(ids), content_hashes=np.asarray(ids), clip_keys=np.asarray(ids),
             hashes=fresh.hashes, lengths=fresh.lengths, keys=np.zeros(3, np.uint64), entries=np.zeros(3, np.int32))
    for data in (fresh.to_bytes(), other.to_bytes(), old.getvalue()):
        loaded = Segment.from_bytes(data, cfg)
        assert loaded.clip_ids == ids
        assert np.array_equal(loaded.entries, fresh.entries)
        assert np.array_equal(loaded.sorted_keys(), fresh.sorted_keys())
        assert NearDupIndex(cfg, [loaded]).query(_query_of(plains[17], 3, seed=1)).clip_id == "c17"


def test_small_committed_segments_are_merged_on_load_and_answer_as_before(file_store):
    """Many small runs make many stored segments; loading merges them in memory (the store keeps one per run),
    the next run still commits at the right position, and every answer, ties included, stays the same."""
    cfg = NearDupConfig()
    plains = _random_clips(90, 10, seed=9)
    runs = [plains[:30], plains[30:60], plains[60:] + [plains[5]]]  # the last run repeats a clip: a tie
    for r, clips in enumerate(runs):
        ids = [f"r{r}-c{i}" for i in range(len(clips))]
        commit_segment(file_store, "main", f"run-{r}", Segment.build(ids, ids, ids, clips, cfg), seen=r)
    index = load_index(file_store, "main", cfg)
    separate = NearDupIndex(cfg, [Segment.from_bytes(file_store.get_bytes(e["key"]), cfg)
                                  for e in read_manifest(file_store, "main")["segments"]])
    assert (len(index.segments), index.committed, len(separate.segments)) == (1, 3, 3)
    for probe in (0, 5, 45, 89):
        sig = _query_of(plains[probe], 2, seed=probe)
        assert index.query(sig) == separate.query(sig)
    assert index.query(_query_of(plains[5], 0, seed=1)).clip_id == "r0-c5"  # the earliest of the tie
    commit_segment(file_store, "main", "run-3", index.live_segment(), seen=index.committed)
    assert len(read_manifest(file_store, "main")["segments"]) == 4

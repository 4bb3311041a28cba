"""Which copy stays (the keep rule) and when windows of one recording are duplicates of each other."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from curation.neardup import NearDupIndex
from curation.quality import SIGNALS_VERSION, QualitySignals
from curation.select import Candidate, clip_origin, decide_duplicates, keep_order, picture_quality
from curation.signature import NearDupConfig, Signature


def signals(*, sharpness: float = 0.5, bright: float = 0.0, duration: float = 4.0) -> QualitySignals:
    return QualitySignals(duration_s=duration, frames=int(duration * 25), short_side=480, luma_mean=110.0,
                          luma_std=50.0, dark_fraction=0.0, bright_fraction=bright, letterbox_fraction=0.0,
                          frame_diff_mean=3.0, sharpness=sharpness, motion_source="frames", gyro_rms=None,
                          accel_std=None, motion_speed=0.05, motion_jitter=0.1, frame_diff_median=3.0,
                          version=SIGNALS_VERSION)


def row(name: str, width: int, height: int, accepted: str | None = "", meta: str | None = None) -> dict:
    recording = hashlib.sha256(name.encode()).hexdigest()
    return {"clip_id": f"{recording}-000000000-abcdef", "delivery": "d", "source_width": width,
            "source_height": height,
            "recording_meta": meta if meta is not None else json.dumps({"accepted_at": accepted or ""})}


def best(rows_and_signals) -> str:
    return min(rows_and_signals, key=lambda rs: keep_order(*rs))[0]["clip_id"]


def test_the_full_size_original_stays_although_its_half_size_copy_was_accepted_first():
    original = row("original", 1280, 720, accepted="2026-02-01T00:00:00")
    half = row("half", 640, 360, accepted="2026-01-01T00:00:00")
    assert best([(half, signals(sharpness=0.6)), (original, signals())]) == original["clip_id"]


def test_a_brightened_copy_loses_to_the_original_and_a_trimmed_one_too():
    original = row("original", 1280, 720, accepted="2026-02-01T00:00:00")
    brighter = row("brighter", 1280, 720, accepted="2026-01-01T00:00:00")
    trimmed = row("trimmed", 1280, 720, accepted="2026-01-01T00:00:00")
    assert picture_quality(signals(bright=0.2)) < picture_quality(signals())
    assert best([(brighter, signals(bright=0.2)), (original, signals())]) == original["clip_id"]
    assert best([(trimmed, signals(duration=3.0)), (original, signals())]) == original["clip_id"]


def test_equal_copies_go_to_the_first_accepted_and_unreadable_metadata_never_comes_first():
    early, late = row("early", 1280, 720, "2026-01-01T00:00:00"), row("late", 1280, 720, "2026-03-01T00:00:00")
    broken, listed = row("broken", 1280, 720, meta="{not json"), row("listed", 1280, 720, meta="[1, 2]")
    assert best([(late, signals()), (early, signals())]) == early["clip_id"]
    for unknown in (broken, listed, row("blank", 1280, 720, accepted=None)):
        assert best([(unknown, signals()), (late, signals())]) == late["clip_id"]


def _candidate(recording: str, t0: float, hashes: np.ndarray, rank: int) -> Candidate:
    clip_id = f"{recording}-{int(t0 * 1000):09d}-abcdef"
    sig = Signature(np.broadcast_to(hashes, (4, 2, *hashes.shape)).copy())
    return Candidate(clip_id, f"clips/p/{recording}/{clip_id}.mp4", (rank,), clip_id, sig, None, None, None,
                     t1=t0 + 4.0)


def _hashes(seed: int, frames: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2 ** 63, size=(len(NearDupConfig().scales), frames), dtype=np.uint64)


def _flip(hashes: np.ndarray, bits: int, seed: int, every: int = 1) -> np.ndarray:
    """The same hashes with `bits` of their 63 bits flipped in every `every`-th frame."""
    rng = np.random.default_rng(seed)
    out = hashes.copy()
    for scale, frame in np.ndindex(out.shape):
        if frame % every == 0:
            for bit in rng.choice(63, bits, replace=False):
                out[scale, frame] ^= np.uint64(1) << np.uint64(int(bit))
    return out


def test_the_next_window_of_one_shot_is_not_its_duplicate_but_the_same_view_in_another_recording_is():
    recording, other = "a" * 64, "b" * 64
    view = _hashes(1)
    first = _candidate(recording, 0.0, view, 0)
    following = _candidate(recording, 4.0, _flip(view, 3, seed=2), 1)  # a slow shot: its next window looks alike
    copy = _candidate(other, 0.0, _flip(view, 3, seed=3), 2)
    verdicts = decide_duplicates([first, following, copy], NearDupIndex())
    assert verdicts[first.clip_id].kept and verdicts[following.clip_id].kept
    assert verdicts[copy.clip_id].reason == "near_duplicate"
    assert clip_origin(following.clip_id) == (recording, 4.0)


def test_a_loop_inside_one_recording_is_a_duplicate_when_far_apart_and_close_in_content():
    recording = "c" * 64
    view = _hashes(4)
    first = _candidate(recording, 0.0, view, 0)
    loop = _candidate(recording, 20.0, _flip(view, 2, seed=5), 1)  # the same segment again, re-encoded
    # the shot came back near that view: half its frames 16 bits off, 8 on average (a copy across recordings)
    returned = _flip(view, 16, seed=6, every=2)
    drifted = _candidate(recording, 40.0, returned, 2)
    elsewhere = _candidate("d" * 64, 0.0, _flip(view, 16, seed=7, every=2), 3)
    verdicts = decide_duplicates([first, loop, drifted, elsewhere], NearDupIndex())
    assert verdicts[loop.clip_id].reason == "near_duplicate" and verdicts[loop.clip_id].duplicate_of == first.clip_id
    assert verdicts[drifted.clip_id].kept
    assert verdicts[elsewhere.clip_id].reason == "near_duplicate" and 6 < verdicts[elsewhere.clip_id].distance <= 12

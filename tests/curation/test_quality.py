"""Each quality reason fires on a clip made to fail it and not on a good one; handheld shake is kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.evalset import blur, camera_frames, encode, letterbox, scale_brightness
from curation.media import decode_clip
from curation.quality import QualityConfig, QualitySignals, measure, quality_detail, quality_reason

GOOD = camera_frames(5, 40)


def still_camera_with_a_moving_object() -> list[np.ndarray]:
    frames = []
    for i in range(40):
        f = GOOD[0].copy()
        f[20:28, (i * 2) % 50:(i * 2) % 50 + 8] = 255
        frames.append(f)
    return frames


def still_with_keyframe_pulses() -> list[np.ndarray]:
    """A still picture whose re-encoding pulses at each keyframe (as a twice-encoded frozen upload does)."""
    rng = np.random.default_rng(0)
    frames = [GOOD[0]] * 40
    for k in range(10, 40, 10):  # a keyframe a second at 10 fps
        frames[k] = np.clip(GOOD[0].astype(np.int16) + rng.integers(-4, 5, GOOD[0].shape), 0, 255).astype(np.uint8)
    return frames


# name -> (frames, imu gyro rms, imu accel std, source short side, expected reason)
CASES = {
    "good": (GOOD, None, None, None, None),
    "handheld_shaky_frames": (camera_frames(5, 40, handheld=4, shake=2), None, None, None, None),
    "handheld_shaky_imu": (camera_frames(5, 40, handheld=4, shake=2), 1.4, 2.5, None, None),
    "too_short": (GOOD[:6], None, None, None, "too_short"),
    "too_small": (GOOD, None, None, 24, "too_small"),
    "too_dark": (scale_brightness(GOOD, 0.08), None, None, None, "too_dark"),
    "too_bright": (scale_brightness(GOOD, 0.3, 200), None, None, None, "too_bright"),
    "letterboxed": (letterbox(GOOD, 12), None, None, None, "letterboxed"),
    "frozen": ([GOOD[0]] * 40, None, None, None, "frozen"),
    "frozen_with_keyframe_pulses": (still_with_keyframe_pulses(), None, None, None, "frozen"),
    "blurry": (blur(GOOD, 5), None, None, None, "blurry"),
    "camera_static_imu": (GOOD, 0.004, 0.01, None, "camera_static"),
    "camera_static_frames": (still_camera_with_a_moving_object(), None, None, None, "camera_static"),
    "violent_shake_imu": (GOOD, 5.5, 9.0, None, "violent_shake"),
    "violent_shake_frames": (camera_frames(5, 40, shake=12), None, None, None, "violent_shake"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_quality_reason(name):
    frames, gyro, accel, side, expected = CASES[name]
    clip = decode_clip(encode(frames), f"clips/p/r/{name}.mp4")
    signals = measure(clip, source_short_side=side, gyro_rms=gyro, accel_std=accel)
    reason = quality_reason(signals, QualityConfig())
    assert reason == expected, signals
    if reason:
        detail = quality_detail(reason, signals, QualityConfig(), f"clips/p/r/{name}.mp4")
        assert f"{name}.mp4" in detail and "QualityConfig" in detail


def test_signals_round_trip_and_thresholds_change_without_decoding():
    clip = decode_clip(encode(blur(GOOD, 5)), "b.mp4")
    signals = measure(clip)
    stored = signals.to_json()
    again = QualitySignals.from_json(stored)
    assert quality_reason(again, QualityConfig()) == "blurry"
    assert quality_reason(again, QualityConfig(min_sharpness=0.0)) is None
    assert set(json.loads(stored)) >= {"luma_mean", "sharpness", "frame_diff_median", "motion_jitter"}


def test_motion_checks_can_be_turned_off():
    clip = decode_clip(encode(GOOD), "g.mp4")
    still = measure(clip, gyro_rms=0.0, accel_std=0.0)
    assert quality_reason(still, QualityConfig()) == "camera_static"
    assert quality_reason(still, QualityConfig(check_camera_static=False)) is None

"""Each quality reason fires on real footage given that one defect and not on the footage itself; handheld shake,
a hand moving before a still camera and a plain surface are kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.evalset import letterbox, scale_brightness
from curation.media import decode_clip
from curation.quality import QualityConfig, QualitySignals, measure, quality_detail, quality_reason
from tests.curation.conftest import encode_like_ingest as encode
from tests.curation.conftest import gaussian_blur, real_frames

FPS = 25  # Big Buck Bunny's rate


def good() -> list[np.ndarray]:
    """2 s of a slow camera move over a rendered meadow, 456x256."""
    return real_frames("bigbuckbunny", 0, 50)


def shaken(amplitude: float, *, hz: float | None = None, count: int = 50, seed: int = 0) -> list[np.ndarray]:
    """A 640x360 view moving over Big Buck Bunny's 1280x720 frames: a sine of `hz` (head shake) or a random jolt
    every frame, `amplitude` of the short side."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        if hz:
            dx, dy = amplitude * np.sin(2 * np.pi * hz * i / FPS), amplitude * np.cos(2 * np.pi * hz * 1.3 * i / FPS)
        else:
            dx, dy = rng.uniform(-amplitude, amplitude, 2)
        top, left = int(180 + dy * 360), int(320 + dx * 360)
        frames += real_frames("bigbuckbunny", i, 1, crop=(top, left, 360, 640))
    return frames


def left_running() -> list[np.ndarray]:
    """A camera left running before a still scene: one real frame, where only a small lamp flickers."""
    still, frames = good()[0], []
    for i in range(50):
        frame = still.copy()
        frame[100:120, 200:230] = 230 if i % 2 else 170
        frames.append(frame)
    return frames


def frozen_with_keyframe_pulses() -> list[np.ndarray]:
    """A still picture whose re-encoding pulses at each keyframe (as a twice-encoded frozen upload does)."""
    rng = np.random.default_rng(0)
    still = good()[0]
    frames = [still] * 50
    for k in range(FPS, 50, FPS):
        frames[k] = np.clip(still.astype(np.int16) + rng.integers(-4, 5, still.shape), 0, 255).astype(np.uint8)
    return frames


def blank_sky() -> list[np.ndarray]:
    """A sharp picture with nothing in it: the cloudless sky of Big Buck Bunny's first shot."""
    return real_frames("bigbuckbunny", 0, 50, crop=(0, 900, 200, 350))


# name -> (the frames, made when the case runs, imu gyro rms, imu accel std, source short side, expected reason)
CASES = {
    "good": (good, None, None, None, None),
    "handheld_shake_frames": (lambda: shaken(0.05, hz=3), None, None, None, None),
    "handheld_shake_imu": (lambda: shaken(0.05, hz=3), 1.4, 2.5, None, None),
    "plain_surface": (blank_sky, None, None, None, None),
    "street_cuts": (lambda: real_frames("bikes", 0, 100), None, None, None, None),
    "camera_in_a_car": (lambda: real_frames("carphone_pristine", 0, 100), None, None, None, None),
    "too_short": (lambda: good()[:6], None, None, None, "too_short"),
    "too_small": (good, None, None, 48, "too_small"),
    "too_dark": (lambda: scale_brightness(good(), 0.08), None, None, None, "too_dark"),
    "too_bright": (lambda: scale_brightness(good(), 0.3, 200), None, None, None, "too_bright"),
    "letterboxed": (lambda: letterbox(good(), 40), None, None, None, "letterboxed"),
    "frozen": (lambda: [good()[0]] * 50, None, None, None, "frozen"),
    "frozen_with_keyframe_pulses": (frozen_with_keyframe_pulses, None, None, None, "frozen"),
    "blurry": (lambda: gaussian_blur(good(), 3.0), None, None, None, "blurry"),
    "camera_static_imu": (good, 0.004, 0.01, None, "camera_static"),
    "camera_static_frames": (left_running, None, None, None, "camera_static"),
    "violent_shake_imu": (good, 5.5, 9.0, None, "violent_shake"),
    "violent_shake_frames": (lambda: shaken(0.12), None, None, None, "violent_shake"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_quality_reason(name):
    make, gyro, accel, side, expected = CASES[name]
    frames = make()
    clip = decode_clip(encode(frames, fps=FPS), f"clips/p/r/{name}.mp4")
    signals = measure(clip, source_short_side=side, gyro_rms=gyro, accel_std=accel)
    reason = quality_reason(signals, QualityConfig())
    assert reason == expected, signals
    if reason:
        detail = quality_detail(reason, signals, QualityConfig(), f"clips/p/r/{name}.mp4")
        assert f"{name}.mp4" in detail and "QualityConfig" in detail


def test_signals_round_trip_and_thresholds_change_without_decoding():
    clip = decode_clip(encode(gaussian_blur(good(), 3.0), fps=FPS), "b.mp4")
    signals = measure(clip)
    stored = signals.to_json()
    again = QualitySignals.from_json(stored)
    assert quality_reason(again, QualityConfig()) == "blurry"
    assert quality_reason(again, QualityConfig(min_sharpness=0.0)) is None
    assert set(json.loads(stored)) >= {"luma_mean", "sharpness", "frame_diff_median", "motion_jitter"}


def test_motion_checks_can_be_turned_off():
    clip = decode_clip(encode(good(), fps=FPS), "g.mp4")
    still = measure(clip, gyro_rms=0.0, accel_std=0.0)
    assert quality_reason(still, QualityConfig()) == "camera_static"
    assert quality_reason(still, QualityConfig(check_camera_static=False)) is None

"""Synthetic media for tests, benchmarks and the demo: small PyAV-encoded videos and IMU streams, deterministic."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

FramePainter = Callable[[int], np.ndarray]  # frame index -> HxWx3 uint8 RGB


@dataclass(frozen=True)
class VideoSpec:
    """What to render: size, rate, length, codec and the scene painted on each frame."""

    width: int = 64
    height: int = 64
    fps: int = 10
    frames: int = 40
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    gop: int = 10
    bitrate: int = 0  # 0: codec default (crf-like quality)
    scene: str = "moving_square"  # moving_square, noise, dark, static, pan
    seed: int = 0


def painter(spec: VideoSpec) -> FramePainter:
    """A function that paints frame i of the spec's scene."""
    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    background = rng.integers(40, 200, size=3, dtype=np.uint8)
    texture = rng.integers(0, 255, size=(h * 2, w * 2, 3), dtype=np.uint8)
    # a smooth texture so codecs keep it and perceptual features have structure to see
    texture = (np.cumsum(np.cumsum(texture.astype(np.float32), 0), 1))
    texture = ((texture - texture.min()) / (np.ptp(texture) + 1e-6) * 255).astype(np.uint8)
    side = max(4, min(h, w) // 4)
    color = rng.integers(0, 255, size=3, dtype=np.uint8)

    def moving_square(i: int) -> np.ndarray:
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = background
        y = int((h - side) * (0.5 + 0.4 * np.sin(i / 7.0 + spec.seed)))
        x = (i * 3 + spec.seed * 11) % max(1, w - side)
        frame[y:y + side, x:x + side] = color
        return frame

    def pan(i: int) -> np.ndarray:  # a moving viewpoint over a textured world, like head motion
        oy = int((h / 2) * (0.5 + 0.5 * np.sin(i / 11.0)))
        ox = (i * 2) % w
        return np.ascontiguousarray(texture[oy:oy + h, ox:ox + w])

    def noise(i: int) -> np.ndarray:
        return np.random.default_rng(spec.seed * 100003 + i).integers(0, 255, (h, w, 3), dtype=np.uint8)

    def dark(i: int) -> np.ndarray:
        return (moving_square(i) // 16).astype(np.uint8)

    def static(i: int) -> np.ndarray:
        return moving_square(0)

    scenes = {"moving_square": moving_square, "pan": pan, "noise": noise, "dark": dark, "static": static}
    if spec.scene not in scenes:
        raise ValueError(f"unknown scene {spec.scene!r}; known: {', '.join(sorted(scenes))}")
    return scenes[spec.scene]


def frames_of(spec: VideoSpec) -> Iterator[np.ndarray]:
    paint = painter(spec)
    for i in range(spec.frames):
        yield paint(i)


def write_video(path: str | Path, spec: VideoSpec = VideoSpec(), frames: Iterator[np.ndarray] | None = None,
                container_format: str | None = None) -> Path:
    """Encode frames (default: the spec's scene) to path with PyAV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(spec.codec, rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        stream.time_base = Fraction(1, spec.fps)
        stream.codec_context.gop_size = spec.gop
        if spec.bitrate:
            stream.bit_rate = spec.bitrate
        if spec.codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        for index, image in enumerate(frames if frames is not None else frames_of(spec)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@dataclass(frozen=True)
class ImuSpec:
    """A synthetic IMU: sines on each axis at rate_hz, timestamps in seconds from t0."""

    seconds: float = 4.0
    rate_hz: float = 200.0
    t0: float = 0.0
    frequency_hz: float = 0.5
    seed: int = 0


IMU_COLUMNS = ("t", "ax", "ay", "az", "gx", "gy", "gz")


def imu_signal(t: np.ndarray, spec: ImuSpec) -> np.ndarray:
    """The analytic signal at times t: [len(t), 6] (accel m/s^2 with gravity on z, gyro rad/s)."""
    phase = spec.seed * 0.37
    w = 2 * np.pi * spec.frequency_hz
    return np.stack([
        np.sin(w * t + phase), np.cos(w * t + phase), 9.81 + 0.1 * np.sin(2 * w * t),
        0.5 * np.sin(w * t), 0.5 * np.cos(w * t), 0.2 * np.sin(3 * w * t + phase),
    ], axis=1)


def imu_table(spec: ImuSpec = ImuSpec()) -> np.ndarray:
    """[n, 7] float64: t, ax, ay, az, gx, gy, gz."""
    t = spec.t0 + np.arange(int(round(spec.seconds * spec.rate_hz))) / spec.rate_hz
    return np.concatenate([t[:, None], imu_signal(t, spec)], axis=1)


def write_imu_csv(path: str | Path, table: np.ndarray, columns: tuple[str, ...] = IMU_COLUMNS) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, table, delimiter=",", header=",".join(columns), comments="", fmt="%.9f")
    return path


def write_imu_npy(path: str | Path, table: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, table.astype(np.float64))
    return path

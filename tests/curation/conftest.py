"""Clip tables made here with PyAV (the ingest stage is built elsewhere): clips in the store at their keys."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from alliance.store import ObjectStore
from alliance.tables import CLIP_SCHEMA


def clip_row(store: ObjectStore, partner: str, delivery: str, name: str, data: bytes, *, width: int = 64,
             height: int = 64, frames: int = 40, fps: float = 10.0, gyro: float | None = None,
             accel: float | None = None, accepted_at: str = "", status: str = "ingested") -> dict:
    """Store a clip's bytes at clips/{partner}/{recording}/{clip}.mp4 and return its CLIP_SCHEMA row."""
    recording = hashlib.sha256(f"{partner}/{name}".encode()).hexdigest()
    clip_id = f"{recording}-{0:09d}"
    key = f"clips/{partner}/{recording}/{clip_id}.mp4"
    store.put_bytes(key, data)
    return {
        "clip_id": clip_id, "recording_id": recording, "partner": partner, "delivery": delivery, "clip_key": key,
        "t0": 0.0, "t1": frames / fps, "frames": frames, "fps": fps, "width": width, "height": height,
        "source_width": width, "source_height": height, "source_codec": "h264",
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

"""Tiny selections for sharding tests: PyAV clips and npy sensor arrays in a store, plus their selection table."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alliance.store import ObjectStore
from alliance.tables import SELECTION_SCHEMA
from ingest.synth import VideoSpec, write_video

PARTNERS = ("glassco", "robofleet", "farmcam")


@dataclass(frozen=True)
class Selection:
    """What a test made: the run name, its rows, and the recordings per partner."""

    run: str
    rows: list[dict]
    recordings: dict[str, list[str]]


def _video_bytes(tmp: Path, seed: int, frames: int) -> bytes:
    path = write_video(tmp / f"v{seed}.mp4", VideoSpec(width=64, height=48, fps=10, frames=frames, seed=seed,
                                                       scene="moving_square"))
    return path.read_bytes()


def make_selection(store: ObjectStore, tmp: Path, *, run: str = "sel-1", recordings_per_partner: int = 2,
                   clips_per_recording: int = 2, frames: int = 8, dropped: int = 1, seed: int = 0) -> Selection:
    """Clips of three partners in the store at the keys the clip table names; `dropped` extra rows not kept."""
    rows: list[dict] = []
    recordings: dict[str, list[str]] = {p: [] for p in PARTNERS}
    n = 0
    for p_i, partner in enumerate(PARTNERS):
        for r in range(recordings_per_partner):
            recording = hashlib.sha256(f"{seed}:{partner}:{r}".encode()).hexdigest()
            recordings[partner].append(recording)
            for c in range(clips_per_recording + (1 if dropped and p_i == 0 and r == 0 else 0)):
                t0 = c * frames / 10
                clip_id = f"{recording}@{t0:.3f}"
                base = f"clips/{partner}/{recording}/{c:04d}"
                store.put_bytes(f"{base}.mp4", _video_bytes(tmp, seed * 1000 + n, frames))
                imu = np.random.default_rng(n).normal(size=(frames, 6)).astype(np.float32)
                buf = io.BytesIO()
                np.save(buf, imu)
                sensor_keys = {}
                if partner != "farmcam":  # one partner without sensors
                    store.put_bytes(f"{base}.imu.npy", buf.getvalue())
                    sensor_keys = {"imu": f"{base}.imu.npy"}
                kept = c < clips_per_recording
                rows.append({
                    "clip_id": clip_id, "recording_id": recording, "partner": partner, "delivery": f"d-{partner}",
                    "clip_key": f"{base}.mp4", "t0": t0, "t1": t0 + frames / 10, "frames": frames, "fps": 10.0,
                    "width": 64, "height": 48, "source_width": 64, "source_height": 48, "source_codec": "h264",
                    "sensor_status": "ok" if sensor_keys else "none", "sensor_keys": json.dumps(sensor_keys),
                    "sensor_channels": json.dumps({"imu": ["ax", "ay", "az", "gx", "gy", "gz"]} if sensor_keys
                                                  else {}),
                    "imu_gyro_rms": 0.5, "imu_accel_std": 0.1, "luma_mean": 100.0, "luma_std": 20.0,
                    "dark_fraction": 0.0, "bright_fraction": 0.0, "frame_diff_mean": 3.0, "sharpness": 50.0,
                    "recording_meta": json.dumps({"device": {"kind": "glasses", "model": "x1"}, "license": "cc-by-4.0",
                                                  "consent": {"scope": ["pretraining", "research"],
                                                              "expires": "2030-01-01"},
                                                  "faces_allowed": False, "delivery": f"d-{partner}"}),
                    "status": "ingested", "kept": kept, "drop_stage": None if kept else "quality",
                    "drop_reason": None if kept else "too_dark", "duplicate_of": None, "cluster": n % 3,
                    "quality": json.dumps({"sharpness": 50.0}),
                })
                n += 1
    return Selection(run, rows, recordings)


def write_selection_table(store: ObjectStore, selection: Selection) -> str:
    table = pa.Table.from_pylist(selection.rows, schema=SELECTION_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    key = f"tables/selections/{selection.run}/part-00000.parquet"
    store.put_bytes(key, sink.getvalue())
    return key


def kept_rows(selection: Selection) -> list[dict]:
    return [r for r in selection.rows if r["kept"]]


def version_bytes(store: ObjectStore, name: str, version: int) -> dict[str, bytes]:
    """Every object a committed version consists of, by key relative to the version: shards, index, manifest."""
    prefix = f"datasets/{name}/v{version}/"
    return {o.key[len(prefix):]: store.get_bytes(o.key) for o in store.list(prefix)}


def set_consent(selection: Selection, recording: str, consent: dict | None) -> None:
    """Give one recording's rows another contract consent (None: no contract, as a folder ingest has)."""
    for row in selection.rows:
        if row["recording_id"] == recording:
            meta = json.loads(row["recording_meta"])
            meta.pop("consent", None)
            if consent is not None:
                meta["consent"] = consent
            row["recording_meta"] = json.dumps(meta)

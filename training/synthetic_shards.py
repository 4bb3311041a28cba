"""Write the synthetic moving-object clips as a real dataset version through the sharding API (tests, benchmark)."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from alliance.store import ObjectStore
from training.synthetic import make_clip


def _mp4(frames: np.ndarray, directory: Path, name: str) -> bytes:
    from ingest.synth import VideoSpec, write_video

    t, h, w, _ = frames.shape
    spec = VideoSpec(width=w, height=h, fps=10, frames=t, gop=t)
    return write_video(directory / f"{name}.mp4", spec, frames=iter(frames)).read_bytes()


def write_synthetic_version(store: ObjectStore, name: str, clips: int, *, frames: int = 16, size: int = 32,
                            seed: int = 0, samples_per_shard: int = 8) -> int:
    """`clips` synthetic clips (mp4 + imu.npy) as dataset `name`; returns the version number (re-runs find it)."""
    from sharding.plan import ShardConfig, plan_samples, plan_version
    from sharding.versions import write_version

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(clips):
            sample = make_clip(i % 8, seed=seed * 1_000_003 + i, frames=frames, size=size, stream=2)
            recording = hashlib.sha256(f"synthetic:{seed}:{i}".encode()).hexdigest()
            base = f"clips/synthetic/{recording}/0000"
            store.put_bytes(f"{base}.mp4", _mp4(sample.frames, Path(tmp), str(i)))
            buffer = io.BytesIO()
            np.save(buffer, sample.sensors["imu"])
            store.put_bytes(f"{base}.imu.npy", buffer.getvalue())
            rows.append({
                "clip_id": f"{recording}@0.000", "recording_id": recording, "partner": "synthetic",
                "delivery": "synthetic", "clip_key": f"{base}.mp4", "t0": 0.0, "t1": frames / 10, "frames": frames,
                "fps": 10.0, "width": size, "height": size, "sensor_keys": json.dumps({"imu": f"{base}.imu.npy"}),
                "sensor_channels": json.dumps({"imu": ["ax", "ay", "az", "gx", "gy", "gz"]}),
                "recording_meta": json.dumps({"license": "synthetic", "consent": {"scope": "research"},
                                              "faces_allowed": True, "label": sample.meta["label"]}),
                "kept": True, "cluster": sample.meta["label"], "quality": "{}",
            })
    samples = plan_samples(rows, store)
    plan = plan_version(samples, ShardConfig(max_samples=samples_per_shard, seed=seed),
                        {"selection": f"synthetic-{seed}-{clips}"})
    return int(write_version(store, name, plan).version)

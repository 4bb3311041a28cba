"""Cut recordings into clips: frame-exact windows, split on hard cuts, re-encoded, sensors aligned to the frames."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alliance.tables import Rejection
from ingest.deid import allowed_json, deidentify, faces_allowed
from ingest.encode import encode_clip, frame_stats
from ingest.frames import luma_of, window_frames, y_plane
from ingest.plan import (ClipConfig, RecordingInfo, WindowTask, clip_id, clip_key, min_frames, plan_recording,
                         sha256_file, target_size)
from ingest.scenes import detect_cuts, luma_histogram, segments_between
from ingest.sensors import imu_stats, resample

# the names the pipeline and its tools take from here; planning lives in ingest/plan.py
__all__ = ["ClipConfig", "ClipOutput", "RecordingInfo", "WindowTask", "clip_id", "cut_window", "plan_recording",
           "sha256_file"]


@dataclass(frozen=True)
class ClipOutput:
    """A finished clip: its table row (CLIP_SCHEMA) and the local files to store under their keys."""

    row: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # store key -> local path


def cut_window(task: WindowTask, out_dir: str | Path) -> tuple[list[ClipOutput], list[Rejection]]:
    """Decode the window, split it on hard cuts (optional), hide faces unless the recording's contract allows them
    (ingest/deid.py), re-encode each part (video only: audio and the source's container metadata never reach a
    clip), align sensors; files in out_dir.

    Memory: one window of frames at training resolution. Raises DecodeError when the window does not decode, and
    deid_failed when faces had to be hidden and could not be.
    """
    rec, window, config = task.recording, task.window, task.config
    fingerprint = config.fingerprint_for(faces_allowed(rec.meta_json))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    size = target_size(rec.width, rec.height, rec.rotation_deg, config)
    frames = list(window_frames(task.path, window, size, rec.rotation_deg, config.allowed_formats, rec.source,
                                max_pixels=config.max_pixels, threads=config.threads))
    shortest = min_frames(config.min_clip_s, window.fps)
    cuts = (detect_cuts([luma_histogram(luma_of(f)) for f in frames], config.scene_threshold)
            if config.scene_split else [])
    outputs, refusals = [], []
    for first, last in segments_between(len(frames), cuts):
        t0 = (window.start_frame + first) / window.fps
        clip = clip_id(rec.recording_id, t0, fingerprint)
        if last - first < shortest:
            refusals.append(Rejection(clip, "cut", "scene_fragment",
                                    f"{rec.source}: {last - first} frames at {t0:.3f} s between hard cuts, shorter "
                                    f"than min_clip_s={config.min_clip_s:g} s; not a clip"))
            continue
        outputs.append(_clip_output(task, clip, frames[first:last], window.frame_times(first, last), out_dir))
    return outputs, refusals


def _clip_output(task: WindowTask, clip: str, frames: list[np.ndarray], times: np.ndarray,
                 out_dir: str | Path) -> ClipOutput:
    rec, config, fps = task.recording, task.config, task.window.fps
    out_dir = Path(out_dir)
    key = clip_key(rec.partner, rec.recording_id, clip)
    if faces_allowed(rec.meta_json):
        deid = allowed_json()
    else:  # before encoding, so every picture made later (thumbnails, reports) shows hidden faces
        deid = deidentify(frames, fps, config.deid, rec.source).to_json()
    deid.update(audio="dropped", container_metadata="dropped")  # encode_clip writes the picture and nothing else
    files = {key: str(encode_clip(frames, fps, out_dir / f"{clip}.mp4", config))}
    sensor_keys, sensor_channels, statuses = {}, {}, []
    gyro_rms = accel_std = None
    for samples in task.sensors:
        values, status = resample(samples, times)
        statuses.append(status)
        if values is None:
            continue
        stream_key = clip_key(rec.partner, rec.recording_id, clip, f"{samples.stream}.npy")
        local = out_dir / f"{clip}.{samples.stream}.npy"
        np.save(local, values.astype(np.float32))
        files[stream_key] = str(local)
        sensor_keys[samples.stream] = stream_key
        sensor_channels[samples.stream] = list(samples.channels)
        if samples.stream == "imu":
            gyro_rms, accel_std = imu_stats(samples.channels, samples.units, values)
    order = ["ok", "sensor_gap", "sensor_invalid"]
    sensor_status = max(statuses, key=order.index) if statuses else "none"
    width, height = frames[0].width, frames[0].height
    source_w, source_h = (rec.height, rec.width) if rec.rotation_deg in (90, 270) else (rec.width, rec.height)
    row = {
        "clip_id": clip, "recording_id": rec.recording_id, "partner": rec.partner, "delivery": rec.delivery,
        "clip_key": key, "t0": float(times[0]), "t1": float(times[0] + len(frames) / fps), "frames": len(frames),
        "fps": float(fps), "width": width, "height": height, "source_width": source_w, "source_height": source_h,
        "source_codec": rec.codec, "sensor_status": sensor_status,
        "sensor_keys": json.dumps(sensor_keys, sort_keys=True),
        "sensor_channels": json.dumps(sensor_channels, sort_keys=True),
        "imu_gyro_rms": gyro_rms, "imu_accel_std": accel_std,
        **frame_stats([y_plane(f) for f in frames], every=config.stats_every),
        "recording_meta": _with_deid(rec.meta_json, deid), "status": "ingested",
        "deid": json.dumps(deid, sort_keys=True),
    }
    return ClipOutput(row, files)


def _with_deid(meta_json: str, deid: dict[str, Any]) -> str:
    """The recording's metadata with this clip's `deid` record beside it: shards carry recording_meta whole, so every
    sample says what was done to its faces (the clip table's own `deid` column says it too)."""
    try:
        meta = json.loads(meta_json or "{}")
    except ValueError:
        return meta_json
    if not isinstance(meta, dict):
        return meta_json
    return json.dumps({**meta, "deid": deid}, sort_keys=True, default=str)


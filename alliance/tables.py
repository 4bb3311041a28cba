"""Schemas of the tables that cross stages (clips, rejections, selections) and the Rejection record."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Rejection:
    """Something refused, as data: which key, at which stage, a stable snake_case reason, and how to fix it."""

    key: str  # the recording, clip or file it concerns
    stage: str  # "contract", "decode", "quality", "dedup", ...
    reason: str  # snake_case, stable, doubles as a metric name: "decode_failed", "too_dark"
    detail: str  # what a person needs to fix it, naming the file

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def of(cls, key: str, stage: str, error: Exception) -> "Rejection":
        """The rejection a media fault earns (a DecodeError or any error with a snake_case `reason`): its reason, and
        its message, which names the file and how to fix it, as the detail."""
        return cls(key, stage, error.reason, str(error))  # type: ignore[attr-defined]


REJECTION_SCHEMA = pa.schema([
    ("key", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
])

# One row per clip, written by ingest to tables/clips/{run}/part-*.parquet.
CLIP_SCHEMA = pa.schema([
    ("clip_id", pa.string()),            # content-derived: recording sha256 + start time
    ("recording_id", pa.string()),       # sha256 of the recording's bytes
    ("partner", pa.string()),
    ("delivery", pa.string()),
    ("clip_key", pa.string()),           # store key of the mp4 at training resolution
    ("t0", pa.float64()),                # seconds from the recording's start
    ("t1", pa.float64()),
    ("frames", pa.int32()),
    ("fps", pa.float32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("source_width", pa.int32()),
    ("source_height", pa.int32()),
    ("source_codec", pa.string()),
    ("sensor_status", pa.string()),      # "ok", "none", "sensor_gap"
    ("sensor_keys", pa.string()),        # JSON: {stream name: store key of its [frames, channels] float32 npy}
    ("sensor_channels", pa.string()),    # JSON: {stream name: [channel names]}
    ("imu_gyro_rms", pa.float32()),      # rad/s over the clip; null without IMU
    ("imu_accel_std", pa.float32()),     # m/s^2 over the clip; null without IMU
    ("luma_mean", pa.float32()),         # 0..255 over sampled frames
    ("luma_std", pa.float32()),
    ("dark_fraction", pa.float32()),     # pixels with luma < 16
    ("bright_fraction", pa.float32()),   # pixels with luma > 239
    ("frame_diff_mean", pa.float32()),   # mean absolute luma change between sampled frames
    ("sharpness", pa.float32()),         # variance of the Laplacian of luma, at training resolution
    ("recording_meta", pa.string()),     # JSON from the contract: device, license, consent, faces
    ("status", pa.string()),             # "ingested" or a snake_case reason
    ("deid", pa.string()),               # JSON: what was done to faces (model, threshold, faces_found,
                                         # frames_with_faces; faces_allowed), audio and container metadata; null in
                                         # tables written before de-identification existed
])

# One row per clip considered by curation, written to tables/selections/{run}/part-*.parquet:
# every CLIP_SCHEMA column plus the verdict.
SELECTION_SCHEMA = pa.schema([
    *CLIP_SCHEMA,
    ("kept", pa.bool_()),
    ("drop_stage", pa.string()),         # null when kept
    ("drop_reason", pa.string()),        # snake_case, null when kept
    ("duplicate_of", pa.string()),       # the clip this one duplicates, when the reason is a duplicate
    ("cluster", pa.int32()),             # semantic cluster, -1 when no encoder ran
    ("quality", pa.string()),            # JSON of the quality signals used for the verdict
])

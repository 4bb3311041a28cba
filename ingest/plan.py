"""Plan a recording's clips: the settings (ClipConfig), content-derived ids, and the frame-exact windows each worker cuts."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from alliance.tables import Rejection
from ingest.container import DEFAULT_FORMATS
from ingest.deid import DeidConfig
from ingest.errors import DecodeError
from ingest.probe import MAX_PIXELS, ProbeResult, probe
from ingest.sensors import SensorSlice, SensorSpec, window_slices

EPS = 1e-6
SPARSE_TIMELINE = 0.25  # frames over the timestamps' span below this share of the declared rate: holes, not video


@dataclass(frozen=True)
class ClipConfig:
    """How recordings become clips; saved with every run."""

    clip_s: float = 4.0  # window length
    stride_s: float = 0.0  # distance between window starts; 0: back to back (= clip_s)
    short_side: int = 256  # training resolution
    upscale: bool = False  # sources smaller than short_side keep their size unless this is set
    fps: float = 0.0  # fixed output rate; 0: the source's rate (rounded real rate for variable-rate sources)
    scene_split: bool = False  # split windows on hard cuts
    scene_threshold: float = 0.35  # histogram distance (0..1) that can be a cut
    min_clip_s: float = 1.0  # the shortest clip: a short recording, the rest after the last window or a scene fragment
    crf: int = 23
    # x264 on one thread per window. Measured on 456x256 head-motion clips at crf 23: ultrafast encodes ~3x faster
    # in about half the bytes but with ~2 dB less PSNR (full-pixel motion, no CABAC, no deblocking); veryfast is ~1.5x
    # slower for the same bytes and PSNR. superfast is the cheapest preset that keeps sub-pixel motion and deblocking.
    # On textured footage panned at sub-pixel speed (1/f^2 texture, sensor noise) ultrafast needs 4-6x superfast's
    # bytes for the same PSNR (subme 0 alone: 2.1x; CAVLC: 1.17x); none of the single switches tried on superfast
    # (aq, weightp, scenecut, 8x8dct, partitions, deblock) encoded measurably faster.
    preset: str = "superfast"
    stats_every: int = 2  # frame statistics on every n-th frame
    threads: int = 1  # decoder and scaler threads per window (0: FFmpeg's choice); 1: workers scale across cores
    max_pixels: int = MAX_PIXELS
    allowed_formats: tuple[str, ...] = tuple(sorted(DEFAULT_FORMATS))
    probe_timeout_s: float = 30.0
    window_timeout_s: float = 120.0  # per clip window: decode, cut, encode
    memory_limit_mb: int = 0  # per decoding child process; 0: unbounded
    deid: DeidConfig = DeidConfig()  # how faces are hidden where the contract does not allow them (ingest/deid.py)

    @property
    def stride(self) -> float:
        return self.stride_s or self.clip_s

    @property
    def fingerprint(self) -> str:
        """Six hex digits of the settings that shape a clip's bytes: part of its id, so that changing them makes
        new clips instead of rows that disagree with files already stored under the same key.

        This is the id of a de-identified clip (faces hidden: the default of every contract) and so covers the
        de-identification settings; a clip whose contract allows faces has another (fingerprint_for), so that a
        contract that changes its mind never finds a clip of the other kind already stored under the same key."""
        return self.fingerprint_for(faces_allowed=False)

    def fingerprint_for(self, faces_allowed: bool) -> str:
        shaping: dict[str, Any] = {"clip_s": self.clip_s, "short_side": self.short_side, "upscale": self.upscale,
                                   "fps": self.fps, "crf": self.crf, "preset": self.preset,
                                   "scene_split": self.scene_split}
        if self.scene_split:
            shaping.update(scene_threshold=self.scene_threshold, min_clip_s=self.min_clip_s)
        if faces_allowed:
            shaping["faces"] = "clear"
        else:
            shaping["deid"] = {k: v for k, v in self.deid.to_json().items() if k != "provider"}
        return hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:6]

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v.to_json() if hasattr(v, "to_json") else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ClipWindow:
    """Output frames [start_frame, start_frame + frames) on the recording's fixed-rate output grid."""

    index: int
    start_frame: int
    frames: int
    fps: float
    start_pts: int | None = None  # the pts (stream time base) of time 0, the recording's first frame as decoded;
    #                               None: the stream's declared start

    @property
    def t0(self) -> float:
        return self.start_frame / self.fps

    @property
    def t1(self) -> float:
        return (self.start_frame + self.frames) / self.fps

    def frame_times(self, first: int = 0, last: int | None = None) -> np.ndarray:
        """Seconds from the recording's start of output frames [first, last) of this window."""
        last = self.frames if last is None else last
        return (self.start_frame + np.arange(first, last)) / self.fps


@dataclass(frozen=True)
class RecordingInfo:
    """What every clip of a recording carries: ids, source facts and the contract's metadata."""

    recording_id: str  # sha256 of the bytes
    partner: str
    delivery: str
    source: str  # how messages name the file (store key or path)
    codec: str = ""  # the rest is filled in from the probe by plan_recording
    width: int = 0
    height: int = 0
    rotation_deg: int = 0
    meta_json: str = "{}"


@dataclass(frozen=True)
class WindowTask:
    """One unit of parallel work: a window of a recording, with its sensor samples."""

    recording: RecordingInfo
    path: str  # local file the worker decodes
    window: ClipWindow
    config: ClipConfig
    sensors: tuple[SensorSlice, ...] = ()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The recording id: SHA-256 of the bytes, read in bounded memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def clip_id(recording_id: str, t0: float, fingerprint: str = "") -> str:
    """Content-derived: the recording's sha256, the start in milliseconds (sorts by time), and the fingerprint of
    the settings that shaped it (ClipConfig.fingerprint)."""
    base = f"{recording_id}-{int(round(t0 * 1000)):09d}"
    return f"{base}-{fingerprint}" if fingerprint else base


def clip_key(partner: str, recording_id: str, clip: str, suffix: str = "mp4") -> str:
    return f"clips/{partner}/{recording_id}/{clip}.{suffix}"


def output_fps(probe: ProbeResult, config: ClipConfig) -> float:
    if config.fps > 0:
        return float(config.fps)
    if probe.variable_frame_rate:
        return float(max(1, round(probe.fps_real)))
    return float(Fraction(probe.fps_avg).limit_denominator(1001))


def plan_windows(probe: ProbeResult, config: ClipConfig) -> list[ClipWindow]:
    """Back-to-back (or strided) windows of whole output frames, then the rest after the last of them as a shorter
    clip of its own when it holds at least min_clip_s (so is a recording shorter than one window)."""
    fps = output_fps(probe, config)
    if probe.packets and probe.fps_avg and probe.fps_real < SPARSE_TIMELINE * probe.fps_avg:
        raise DecodeError(probe.path, "corrupt",
                          f"its {probe.packets} frames are spread over {probe.duration_s:.0f} s of timestamps "
                          f"({probe.fps_real:.4g} frames/s against a declared {probe.fps_avg:g}): the timeline has "
                          f"holes; re-mux the file with correct timestamps")
    # a duration within half a frame of N frames is N frames: Matroska keeps milliseconds, and 96 frames at 24 fps
    # come back as 3.999 s
    available = int(math.floor(probe.duration_s * fps + 0.5))
    length, stride = max(1, int(round(config.clip_s * fps))), max(1, int(round(config.stride * fps)))
    starts = range(0, available - length + 1, stride)
    windows = [ClipWindow(k, start, length, fps, probe.start_pts) for k, start in enumerate(starts)]
    rest_start = len(windows) * stride
    covered = windows[-1].start_frame + length if windows else 0
    if available > covered and min_frames(config.min_clip_s, fps) <= available - rest_start < length:
        windows.append(ClipWindow(len(windows), rest_start, available - rest_start, fps, probe.start_pts))
    if not windows:
        raise DecodeError(probe.path, "too_short",
                          f"lasts {probe.duration_s:.2f} s ({available} frames at {fps:g} fps), shorter than the "
                          f"shortest clip (min_clip_s={config.min_clip_s:g} s); deliver longer recordings")
    return windows


def min_frames(seconds: float, fps: float) -> int:
    """Frames a clip needs to last `seconds`: curation measures a clip as frames / fps and refuses one below its
    minimum, so this rounds up."""
    return max(1, int(math.ceil(seconds * fps - EPS)))


def target_size(width: int, height: int, rotation_deg: int, config: ClipConfig) -> tuple[int, int]:
    """(width, height) to scale the coded picture to, so that its displayed short side is config.short_side."""
    short = min(width, height)
    scale = config.short_side / short if (config.upscale or short > config.short_side) else 1.0
    return _even(width * scale), _even(height * scale)


def _even(side: float) -> int:
    """yuv420p needs even sides."""
    return max(2, int(round(side / 2)) * 2)


def plan_recording(path: str, recording: RecordingInfo, sensors: Sequence[SensorSpec],
                   config: ClipConfig) -> Iterator[WindowTask | Rejection]:
    """Probe (bounded time), plan the windows and attach each stream's samples: a stream of WindowTasks, plus one
    Rejection per sensor stream that cannot be used. Raises DecodeError when the recording gives no window at all."""
    result = probe(path, timeout_s=config.probe_timeout_s, max_pixels=config.max_pixels,
                   allowed_formats=config.allowed_formats)
    windows = plan_windows(result, config)
    rec = replace(recording, codec=result.codec, width=result.width, height=result.height,
                  rotation_deg=result.rotation_deg)
    spans = [(w.t0, w.t1) for w in windows]
    streams = [window_slices(spec, spans) for spec in sensors]
    reported: set[str] = set()
    for window in windows:
        slices = tuple(next(stream) for stream in streams)
        for spec, samples in zip(sensors, slices):
            if samples.problem and spec.stream not in reported:
                reported.add(spec.stream)
                yield Rejection(spec.name, "sensors", samples.problem,
                              f"{samples.detail}; clips from {window.t0:.3f} s on carry no {spec.stream} data")
        yield WindowTask(rec, path, window, config, slices)

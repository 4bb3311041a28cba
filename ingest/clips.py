"""Cut recordings into clips: frame-exact windows, split on hard cuts, re-encoded, sensors aligned to the frames."""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from alliance.tables import Rejection
from ingest.container import DEFAULT_FORMATS, open_container
from ingest.deid import DeidConfig, allowed_json, deidentify, faces_allowed
from ingest.errors import DecodeError
from ingest.probe import MAX_PIXELS, ProbeResult, probe
from ingest.scenes import detect_cuts, luma_histogram, segments_between
from ingest.sensors import SensorSlice, SensorSpec, imu_stats, resample, window_slices

EPS = 1e-6
MAX_HOLD_S = 0.5  # an output frame may show a source frame at most this far from its time (or 2.5 frames)
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


@dataclass(frozen=True)
class ClipOutput:
    """A finished clip: its table row (CLIP_SCHEMA) and the local files to store under their keys."""

    row: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # store key -> local path


# --------------------------------------------------------------------------- ids and planning


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


# --------------------------------------------------------------------------- decoding one window


def window_frames(path: str, window: ClipWindow, size: tuple[int, int], rotation_deg: int,
                  allowed_formats=DEFAULT_FORMATS, source: str | None = None, max_pixels: int = MAX_PIXELS,
                  threads: int = 1) -> Iterator[Any]:
    """The window's output frames as yuv420p av.VideoFrames at `size`, rotation applied, decoded from the keyframe
    before it; frame-exact: output frame j shows the source frame nearest to (start_frame + j) / fps, in time since
    the recording's first frame (window.start_pts).

    One swscale pass per frame, straight from the decoded picture to what the encoder takes (no RGB in between).
    `threads` bounds the decoder and the scaler: 1 keeps a window on one core, and workers scale across cores.
    A window whose frames decode with errors (concealed damage) is refused `corrupt_frames` once decoded.
    """
    import av
    from av.video.reformatter import VideoReformatter

    name = source or path
    container, raw, _ = open_container(path, allowed_formats, max_pixels)
    with raw, container, DecoderErrors() as errors:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = max(0, threads)
        stream.thread_type = "NONE" if threads == 1 else "AUTO"
        base = stream.time_base
        start = window.start_pts if window.start_pts is not None else (stream.start_time or 0)
        targets = window.frame_times()
        half = 0.5 / window.fps
        hold = max(MAX_HOLD_S, 2.5 / window.fps)
        if window.start_frame > 0:
            # the last keyframe at or before t0: frames before it are farther from every target than it is, so
            # none is needed (seeking to t0 - half frame would decode a whole extra GOP when a keyframe sits at t0)
            container.seek(start + int(math.floor((window.t0 + EPS) / base)), stream=stream, backward=True)
        scaler = VideoReformatter()  # one scaling context for the window, not one per frame
        converted: dict[int, Any] = {}

        def scaled(pts: int, frame):
            if pts not in converted:  # a source frame held for several output frames is scaled once
                converted.clear()
                converted[pts] = turn(scaler.reformat(frame, width=size[0], height=size[1], format="yuv420p",
                                                      threads=max(0, threads)), rotation_deg)
            return converted[pts]

        def failure(reason: str = "corrupt_frames", detail: str = "") -> DecodeError:
            """The refusal of this window: damage seen on the way is the cause of whatever else went wrong, and any
            damage refuses it (a damaged frame spoils the frames predicted from it, up to the next keyframe, and
            FFmpeg reports only the first)."""
            if not errors.packets:
                return DecodeError(name, reason, detail)
            first = float((errors.first_pts - start) * base) if errors.first_pts is not None else window.t0
            return DecodeError(name, "corrupt_frames",
                               f"decoding the clip {window.t0:.3f}-{window.t1:.3f} s met {errors.packets} frame(s) "
                               f"with errors, the first at {first:.3f} s (damaged data that the decoder conceals or "
                               f"drops, and that later frames predict from); copy or export the file again")

        j, previous, last_time, spacing = 0, None, None, 0.0
        try:
            for pts, frame in display_order(errors.decode(container, stream), stream.codec_context):
                t = float((pts - start) * base)
                if previous is None and window.start_frame > 0 and t > targets[0] + half:
                    raise failure("decode_failed", f"seeking to {window.t0:.3f} s landed at {t:.3f} s; the file's "
                                                   f"index is unusable: remux it")
                while j < len(targets) and t >= targets[j] - EPS:
                    nearer_previous = previous is not None and (targets[j] - previous[0]) <= (t - targets[j]) + EPS
                    if previous is None and t - targets[j] > half + EPS:
                        raise failure("decode_failed", f"no frame near {targets[j]:.3f} s (the first is at "
                                                       f"{t:.3f} s); re-export the file")
                    distance = (targets[j] - previous[0]) if nearer_previous else (t - targets[j])
                    if distance > hold + EPS:
                        raise failure("decode_failed", f"no frame within {hold:.2f} s of {targets[j]:.3f} s (the "
                                                       f"timeline has a gap); re-export the file")
                    yield scaled(previous[2] if nearer_previous else pts, previous[1] if nearer_previous else frame)
                    j += 1
                if j >= len(targets):
                    if errors.packets:
                        raise failure()
                    return
                spacing = t - previous[0] if previous is not None else spacing
                previous, last_time = (t, frame, pts), t
        except av.error.FFmpegError as e:
            where = f"{last_time:.3f} s" if last_time is not None else f"{window.t0:.3f} s"
            raise DecodeError(name, "decode_failed", f"frames after {where} do not decode ({e}); "
                                                     f"re-export the file") from e
        # the end of the stream: the last frame stands for targets within its own time on screen (the spacing of
        # the frames before it), or within half an output frame
        reach = max(half, spacing - half)
        while previous is not None and j < len(targets) and targets[j] - previous[0] <= reach + EPS:
            yield scaled(previous[2], previous[1])
            j += 1
        if j < len(targets):
            ended = f"{last_time:.3f} s" if last_time is not None else "its start"
            raise DecodeError(name, "truncated", f"the video ends at {ended}, inside the clip "
                                                 f"{window.t0:.3f}-{window.t1:.3f} s; upload the complete file")
        if errors.packets:
            raise failure()


def display_order(frames: Iterator[Any], codec_context) -> Iterator[tuple[int, Any]]:
    """(pts, frame) in the decoder's output order, which is display order, each frame given the smallest pts not yet
    given out among the frames held back.

    Where a container stores no presentation times (AVI), FFmpeg guesses them from decode order, and after B-frames a
    decoded frame carries a neighbour's time (x264 in AVI: 1, 3, 4, 2, 6, 7, 5, ...). The times are right as a set
    and the order is right, so holding back as many frames as the decoder reorders (reorder_depth) pairs them up
    again; for any other stream this changes nothing. Frames without a pts are skipped.
    """
    times: list[int] = []
    held: deque = deque()
    for frame in frames:
        if frame.pts is None:
            continue
        heapq.heappush(times, frame.pts)
        held.append(frame)
        if len(held) > codec_context.reorder_depth:  # FFmpeg's has_b_frames (PyAV's has_b_frames is a bool)
            yield heapq.heappop(times), held.popleft()
    while held:
        yield heapq.heappop(times), held.popleft()


class DecoderErrors:
    """While open: FFmpeg's error messages are counted (and kept out of the logs), and `decode` yields a stream's
    frames while counting the packets the decoder reported errors on or refused.

    FFmpeg conceals damaged data (a broken slice is filled in from its neighbours) and says so in its log; the
    frame's corrupt flag is set for some of it only (single-threaded H.264 flags the damaged frame, slice threads flag
    nothing) and never for the frames predicted from it. PyAV counts error messages, from any thread, once its log
    level is set; reading the count after each packet costs nothing measurable.
    """

    def __init__(self) -> None:
        self.packets = 0  # packets with decoder errors (or frames flagged corrupt)
        self.first_pts: int | None = None  # the earliest of them

    def __enter__(self) -> "DecoderErrors":
        import av.logging

        self._level = av.logging.get_level()
        if self._level is None or self._level < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)  # PyAV counts nothing while its logging is off
        # out of the process's logs: this thread's messages and those of FFmpeg's decoder threads (which have no
        # capture of their own); a window decodes alone in its child process
        self._capture = av.logging.Capture(local=False)
        self._capture.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        import av.logging

        self._capture.__exit__(*exc)
        av.logging.set_level(self._level)

    def _count(self, pts: int | None) -> None:
        self.packets += 1
        if pts is not None and (self.first_pts is None or pts < self.first_pts):
            self.first_pts = pts

    def decode(self, container, stream) -> Iterator[Any]:
        """The stream's frames from where the container stands. Errors on packets shown before the first one (the
        leading pictures of an open GOP after a seek, which lack references by design and nothing later uses) are
        not damage; a packet the decoder refuses as invalid data is, and decoding goes on past it."""
        import av
        import av.logging

        first = None
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if first is None and packet.size:
                first = stamp
            before, refused = av.logging.get_last_error()[0], False
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                frames, refused = (), True
            leading = stamp is not None and first is not None and stamp < first
            if (refused or av.logging.get_last_error()[0] != before) and not leading:
                self._count(stamp)
            for frame in frames:
                if frame.is_corrupt:
                    self._count(frame.pts)
                yield frame


def turn(frame, rotation_deg: int):
    """A new yuv420p av.VideoFrame with the pixels of `frame` turned counter-clockwise by the display rotation, and
    nothing else of it: a decoded frame's picture type would make x264 copy the source's keyframes and frame types
    (other bytes for the same pixels), and its side data (SEI, captions) would travel into the clip."""
    import av

    if (rotation_deg // 90) % 4:
        return av.VideoFrame.from_ndarray(rotate(frame.to_ndarray(), rotation_deg, "yuv420p"), format="yuv420p")
    clean = av.VideoFrame(frame.width, frame.height, "yuv420p")
    for target, plane in zip(clean.planes, frame.planes):
        rows = np.frombuffer(target, np.uint8).reshape(target.height, target.line_size)
        rows[:, :target.width] = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]
    return clean


def rotate(image: np.ndarray, rotation_deg: int, pix_fmt: str = "rgb24") -> np.ndarray:
    """Turn a frame counter-clockwise by the display rotation; always an owned, contiguous copy (arrays that view
    PyAV's buffers made the encoder's output vary between runs)."""
    turns = (rotation_deg // 90) % 4
    if pix_fmt != "yuv420p" or turns == 0:
        return np.array(np.rot90(image, k=turns), order="C", copy=True)
    height, width = image.shape[0] * 2 // 3, image.shape[1]
    flat = image.reshape(-1)
    planes = [flat[:height * width].reshape(height, width),
              flat[height * width:height * width * 5 // 4].reshape(height // 2, width // 2),
              flat[height * width * 5 // 4:].reshape(height // 2, width // 2)]
    turned = [np.rot90(plane, k=turns) for plane in planes]
    new_height, new_width = turned[0].shape
    return np.concatenate([plane.reshape(-1) for plane in turned]).reshape(new_height * 3 // 2, new_width)


# limited-range Y (16..235) -> full-range luma (0..255), for every possible byte
FULL_RANGE = np.clip((np.arange(256, dtype=np.float32) - 16.0) * np.float32(255.0 / 219.0), 0.0, 255.0)


def y_plane(frame) -> np.ndarray:
    """The Y plane (uint8 [H, W], limited range) of a yuv420p av.VideoFrame, read in place (no copy)."""
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


def luma_of(frame) -> np.ndarray:
    """Full-range luma (0..255, float32 [H, W]) of a yuv420p av.VideoFrame."""
    return FULL_RANGE[y_plane(frame)]


# --------------------------------------------------------------------------- encoding and statistics


def encode_clip(frames: list[Any], fps: float, path: str | Path, config: ClipConfig) -> Path:
    """H.264 in MP4 at a fixed rate from yuv420p av.VideoFrames; deterministic for the same frames and settings."""
    import av

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = 1 / rate
        stream.codec_context.gop_size = max(1, int(round(fps)))
        # mbtree off: with it x264 gave different bytes for the same frames from run to run (seen with PyAV 18);
        # one thread: a window is one core's work (workers scale across cores), and the bytes never depend on it
        stream.codec_context.options = {"preset": config.preset, "crf": str(config.crf), "threads": "1", "mbtree": "0"}
        for index, frame in enumerate(frames):
            # in the encoder's time base (PyAV rescales a frame's pts from its own time base); set at each send, so
            # a frame held for two output times goes out under both
            frame.time_base, frame.pts = 1 / rate, index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_stats(planes: list[np.ndarray], every: int = 2) -> dict[str, float]:
    """The basic frame statistics curation needs, in full-range luma, from limited-range Y planes (uint8 [H, W]) of
    every n-th frame.

    Full-range luma is the Y byte clipped to 16..235, less 16, times 255/219 (FULL_RANGE): every statistic is computed
    on the clipped bytes with exact integer sums (_exact_sums), and scaled. One sampled frame is worked on at a time.
    """
    scale = 255.0 / 219.0
    pixels = total = squares = dark = bright = 0
    diffs, laplacian = [], []
    previous = None
    for y in planes[::max(1, every)]:
        clipped = np.clip(y, 16, 235).astype(np.int16)
        n, s, q = _exact_sums(clipped)
        pixels, total, squares = pixels + n, total + s, squares + q
        dark += int(np.count_nonzero(y <= _DARKEST))
        bright += int(np.count_nonzero(y >= _BRIGHTEST))
        if previous is not None:
            difference = clipped - previous
            diffs.append(int(np.abs(difference, out=difference).sum(dtype=np.int64)) / difference.size * scale)
        previous = clipped
        if min(y.shape) >= 3:
            response = clipped[:-2, 1:-1] + clipped[2:, 1:-1]
            response += clipped[1:-1, :-2]
            response += clipped[1:-1, 2:]
            response -= 4 * clipped[1:-1, 1:-1]
            laplacian.append(_variance(response) * scale ** 2)
    mean = total / pixels
    return {
        "luma_mean": (mean - 16.0) * scale,
        "luma_std": math.sqrt(max(0.0, squares / pixels - mean * mean)) * scale,
        "dark_fraction": dark / pixels,
        "bright_fraction": bright / pixels,
        "frame_diff_mean": float(np.mean(diffs)) if diffs else 0.0,
        "sharpness": float(np.mean(laplacian)) if laplacian else 0.0,
    }


_DARKEST = int(np.flatnonzero(FULL_RANGE < 16).max())  # the last Y byte whose full-range luma is below 16
_BRIGHTEST = int(np.flatnonzero(FULL_RANGE > 239).min())  # the first above 239


def _exact_sums(values: np.ndarray) -> tuple[int, int, int]:
    """Count, sum and sum of squares of small integers (|v| * sqrt(n) below 2**26), exact: float64 dot products of
    integers stay exact below 2**53."""
    flat = values.astype(np.float64).ravel()
    return flat.size, int(flat.sum()), int(flat @ flat)


def _variance(values: np.ndarray) -> float:
    """Population variance of small integers, from exact sums."""
    n, total, squares = _exact_sums(values)
    return max(0.0, (squares - total * total / n) / n)


# --------------------------------------------------------------------------- one window, end to end


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


# --------------------------------------------------------------------------- a recording, planned


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

"""Probe a video file in bounded time: container, codec, size, frame rates, duration, rotation, keyframes."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.bounded import run_bounded
from ingest.container import DEFAULT_FORMATS, mp4_has_video_track, open_container
from ingest.errors import DecodeError

MAX_PIXELS = 4096 * 4096
VFR_TOLERANCE = 0.10  # frame durations spread more than this around their median: variable frame rate


@dataclass(frozen=True)
class ProbeResult:
    """What a recording is, read from its packets and its first decoded frames."""

    path: str
    container_format: str  # FFmpeg demuxer name: mov, matroska, avi, mpegts
    codec: str
    width: int  # coded size, before rotation
    height: int
    pix_fmt: str
    bit_depth: int
    fps_avg: float  # what the container declares
    fps_real: float  # frames over the span of their timestamps
    variable_frame_rate: bool
    duration_s: float  # from the first decoded frame's time to the end of the last packet
    frames: int | None  # decoded frame count when every frame was decoded, else None
    rotation_deg: int  # counter-clockwise display rotation, 0/90/180/270
    has_audio: bool
    keyframe_interval_s: float | None  # median spacing of keyframes; None with a single keyframe
    packets: int = 0  # video packets demuxed (frames the container holds)
    start_pts: int = 0  # the first decoded frame's pts (stream time base): time 0 of the recording


    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) once the rotation is applied."""
        return (self.height, self.width) if self.rotation_deg in (90, 270) else (self.width, self.height)


def probe(path: str | Path, *, timeout_s: float = 10.0, max_pixels: int = MAX_PIXELS,
          allowed_formats=DEFAULT_FORMATS, decode_all: bool = False) -> ProbeResult:
    """Probe in a child process killed after timeout_s; DecodeError (with a reason) for anything unusable.

    decode_all=True decodes every frame (finds corruption half-way; `frames` is then the decoded count).
    """
    return run_bounded(probe_in_process, (str(path), max_pixels, tuple(sorted(allowed_formats)), decode_all),
                       path=path, timeout_s=timeout_s)


def probe_in_process(path: str, max_pixels: int = MAX_PIXELS, allowed_formats=DEFAULT_FORMATS,
                     decode_all: bool = False) -> ProbeResult:
    """The probe itself, in this process and without a time bound (use `probe` for partner files)."""
    import av

    container, raw, fmt = open_container(path, allowed_formats, max_pixels)
    with raw, container:
        videos = container.streams.video
        if not videos and fmt == "mov" and mp4_has_video_track(path, raw_size(raw)):
            raise DecodeError(path, "corrupt", "declares a video track that its index does not describe (damaged "
                                               "'moov' box); re-export the file")
        if len(videos) != 1:
            what = "no video stream" if not videos else f"{len(videos)} video streams"
            raise DecodeError(path, "no_video_stream", f"has {what}; deliver a file with exactly one video stream")
        stream = videos[0]
        ctx = stream.codec_context
        if ctx is None:
            raise DecodeError(path, "unsupported_codec", "its video codec is unknown here (or its description is "
                                                         "damaged); re-encode it (H.264 or HEVC in mp4 is safest)")
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise DecodeError(path, "corrupt", f"declares a {width}x{height} picture; re-export the file")
        if width * height > max_pixels:
            raise DecodeError(path, "resolution_too_large",
                              f"declares {width}x{height} = {width * height} pixels, above the bound of {max_pixels}; "
                              f"downscale it before delivery")
        if ctx.codec is None or not ctx.codec.is_decoder:
            raise DecodeError(path, "unsupported_codec", f"codec {ctx.name!r} has no decoder here; re-encode it "
                                                         f"(H.264 or HEVC in mp4 is safest)")
        has_audio = len(container.streams.audio) > 0
        fps_avg = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0.0)
        stream.thread_type = "AUTO"
        times, key_times, durations = array("q"), array("q"), array("q")  # 8 bytes a frame, hours long or not
        decoded = 0
        first = None
        flushed = False
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0:  # the demuxer's end-of-stream packet flushes the decoder
                    flushed = True
                    decoded, first = _decode(stream, packet, decoded, first)
                    continue
                if stamp is None:
                    continue
                times.append(stamp)
                durations.append(packet.duration or 0)
                if packet.is_keyframe:
                    key_times.append(stamp)
                if decode_all or first is None:
                    decoded, first = _decode(stream, packet, decoded, first)
            if not flushed:
                decoded, first = _decode(stream, None, decoded, first)
        except av.error.FFmpegError as e:
            raise DecodeError(path, "decode_failed",
                              f"stops decoding after {decoded} frames ({e}); re-export the file") from e
        if first is None and not times:
            raise DecodeError(path, "corrupt", "its index lists no video frames (damaged sample table); "
                                               "re-export the file")
        if first is None:
            raise DecodeError(path, "decode_failed", f"holds {len(times)} video packets but no frame decodes; "
                                                     f"re-export the file")
        rotation, pix_fmt, bit_depth, start_pts = first
        base = float(stream.time_base)
        if start_pts is None:  # a decoder that gives no pts: the packets' first time stands in
            start_pts = min(times) if times else 0
        # time 0 is the first frame as decoded, not the stream's declared start: an AVI's first frame can come out at
        # pts 1 (B-frames), and packets an edit list hides (pts before the first frame) are no part of the recording
        stamps = np.unique(np.asarray(times, dtype=np.int64))
        stamps = stamps[stamps >= start_pts] if stamps.size and stamps[-1] >= start_pts else stamps
        steps = np.diff(stamps) * base
        step = float(np.median(steps)) if steps.size else (1.0 / fps_avg if fps_avg else 0.0)
        last = int(np.argmax(times)) if times else 0
        last_duration = durations[last] * base if times and durations[last] else step
        span = float((stamps[-1] - min(int(stamps[0]), start_pts)) * base) if stamps.size else 0.0
        duration_s = span + last_duration
        fps_real = (len(stamps) / duration_s) if duration_s > 0 else fps_avg
        vfr = bool(steps.size > 1 and step > 0 and np.max(np.abs(steps - step)) > VFR_TOLERANCE * step)
        keys = np.unique(np.asarray(key_times, dtype=np.int64))
        key_interval = float(np.median(np.diff(keys)) * base) if keys.size > 1 else None
        return ProbeResult(
            path=path, container_format=fmt, codec=ctx.name, width=width, height=height, pix_fmt=pix_fmt,
            bit_depth=bit_depth, fps_avg=fps_avg or fps_real, fps_real=fps_real, variable_frame_rate=vfr,
            duration_s=duration_s, frames=decoded if decode_all else None, rotation_deg=rotation,
            has_audio=has_audio, keyframe_interval_s=key_interval, packets=len(times), start_pts=int(start_pts))


def raw_size(raw) -> int:
    import os

    return os.fstat(raw.fileno()).st_size


def _decode(stream, packet, decoded: int, first):
    for frame in stream.decode(packet):
        if first is None:
            first = (int(frame.rotation or 0) % 360, frame.format.name, _bit_depth(frame.format), frame.pts)
        decoded += 1
    return decoded, first


def _bit_depth(video_format) -> int:
    components = getattr(video_format, "components", ())
    depths = [int(c.bits) for c in components if getattr(c, "bits", 0)]
    return max(depths) if depths else 8

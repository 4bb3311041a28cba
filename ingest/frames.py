"""Decode one window's frames (frame-exact, in display order, damage counted), turned upright; luma of a frame."""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any, Iterator

import numpy as np

from ingest.container import DEFAULT_FORMATS, open_container
from ingest.errors import DecodeError
from ingest.plan import EPS, ClipWindow
from ingest.probe import MAX_PIXELS

MAX_HOLD_S = 0.5  # an output frame may show a source frame at most this far from its time (or 2.5 frames)


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


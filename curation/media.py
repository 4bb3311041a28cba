"""Decoding one clip for curation (PyAV): its frames, their times, and a hash of the decoded content."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from alliance.errors import DecodeError


@dataclass(frozen=True)
class DecodedClip:
    """Every frame of one clip (uint8 RGB [N, H, W, 3]), their times in seconds, and its decoded-content hash."""

    frames: np.ndarray
    times: np.ndarray
    content_hash: str

    @property
    def duration_s(self) -> float:
        if len(self.times) < 2:
            return 0.0
        step = float(np.median(np.diff(self.times)))
        return float(self.times[-1] - self.times[0]) + step

    @property
    def fps(self) -> float:
        return (len(self.times) / self.duration_s) if self.duration_s > 0 else 0.0


def decode_clip(data: bytes, clip_key: str, *, max_frames: int = 4096) -> DecodedClip:
    """Decode a clip from its bytes. The hash covers only decoded pixels, so a remux into another container keeps it."""
    import av

    digest = hashlib.sha256()
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DecodeError(clip_key, "no_video_stream", "has no video stream; re-run ingest for this clip")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="rgb24")
                digest.update(np.ascontiguousarray(image).tobytes())
                frames.append(image)
                rate = float(stream.average_rate or 1)
                times.append(float(frame.time) if frame.time is not None else len(times) / rate)
                if len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as e:
        raise DecodeError(clip_key, "decode_failed",
                              f"PyAV could not decode it ({e}); re-run ingest for this clip") from e
    if not frames:
        raise DecodeError(clip_key, "decode_failed", "decoded to zero frames; re-run ingest for this clip")
    order = np.argsort(np.asarray(times), kind="stable")
    stacked = np.stack([frames[i] for i in order])
    return DecodedClip(stacked, np.asarray(times, dtype=np.float64)[order], digest.hexdigest())


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB frames [..., 3] as float32 in 0..255."""
    rgb = frames.astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average resize of a 2-D float array (the first two axes of a larger one) to height x width."""
    h, w = image.shape[:2]
    rows = np.linspace(0, h, height + 1).astype(int)
    cols = np.linspace(0, w, width + 1).astype(int)
    rows[-1], cols[-1] = h, w
    if np.any(np.diff(rows) == 0) or np.any(np.diff(cols) == 0):  # upscaling: nearest neighbour
        ri = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
        ci = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
        return image[ri][:, ci].astype(np.float32)
    summed = np.add.reduceat(np.add.reduceat(image.astype(np.float64), rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.outer(np.diff(rows), np.diff(cols))
    if summed.ndim == 3:
        counts = counts[..., None]
    return (summed / counts).astype(np.float32)


def sample_indices(times: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` frame indices evenly spread over the clip, in order, without repeats."""
    n = len(times)
    if n <= count:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))


def thumbnail_jpeg(frame: np.ndarray, width: int = 160) -> bytes:
    """One RGB frame as JPEG bytes, scaled to `width` (made with PyAV's MJPEG encoder)."""
    import av

    h, w = frame.shape[:2]
    height = max(2, int(round(h * width / w / 2)) * 2)
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    source = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    scaled = source.reformat(width=width, height=height, format="yuvj420p")
    packets = [*codec.encode(scaled), *codec.encode(None)]
    return b"".join(bytes(p) for p in packets)

"""Encode a clip's frames to H.264 (deterministic bytes) and measure the frame statistics curation reads."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ingest.frames import FULL_RANGE
from ingest.plan import ClipConfig


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


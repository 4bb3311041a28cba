"""Hard-cut detection on luma histograms: a camera that moves changes the picture, a cut changes its content."""

from __future__ import annotations

import numpy as np

BINS = 32
_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def luma(frame: np.ndarray) -> np.ndarray:
    """Luma (0..255, float32) of an RGB uint8 frame."""
    return frame.astype(np.float32) @ _WEIGHTS


def luma_histogram(frame: np.ndarray) -> np.ndarray:
    """A normalized 32-bin luma histogram of every other pixel: blind to where things are, so pans barely move it.

    Takes an RGB frame [H, W, 3] or a luma plane [H, W] (0..255).
    """
    y = luma(frame[::2, ::2]) if frame.ndim == 3 else frame[::2, ::2]
    counts = np.bincount((y * (BINS / 256.0)).astype(np.int32).clip(0, BINS - 1).ravel(),
                         minlength=BINS).astype(np.float64)
    return counts / max(1.0, counts.sum())


def detect_cuts(histograms: list[np.ndarray], threshold: float = 0.35, ratio: float = 3.0,
                context: int = 4) -> list[int]:
    """Indices i where a hard cut lies between frames i-1 and i.

    A cut needs a histogram distance (half the L1, 0..1) above `threshold` AND `ratio` times the median distance of
    the frames around it: head motion and fast pans raise every distance for a while, a cut is one isolated spike.
    """
    if len(histograms) < 2:
        return []
    h = np.stack(histograms)
    distance = np.concatenate([[0.0], 0.5 * np.abs(np.diff(h, axis=0)).sum(axis=1)])
    cuts = []
    for i in range(1, len(distance)):
        if distance[i] <= threshold:
            continue
        around = np.concatenate([distance[max(1, i - context):i], distance[i + 1:i + 1 + context]])
        if around.size == 0 or distance[i] > ratio * float(np.median(around)):
            cuts.append(i)
    return cuts


def segments_between(frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[first, last) frame ranges between cuts."""
    edges = [0, *[c for c in cuts if 0 < c < frames], frames]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]

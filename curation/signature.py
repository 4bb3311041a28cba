"""Perceptual video signatures: 63-bit DCT hashes of sampled frames (plain, mirrored, cropped, phase-shifted) and the
best-alignment hamming distance between two clips."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from curation.media import DecodedClip, luma, resize_area

HASH_BITS = 63  # 8x8 low-frequency DCT block without its DC term


@dataclass(frozen=True)
class NearDupConfig:
    """How signatures are made and when two clips count as near duplicates."""

    sample_fps: float = 3.0          # frames hashed per second, on a fixed grid from the clip's start
    phases: int = 4                  # a query is also hashed on grids shifted by 1/phases of a step: any trim aligns
    max_samples: int = 48
    scales: tuple[float, ...] = (1.0, 0.8)  # centre crops hashed per frame: a cropped copy matches the 0.8 view
    band_bits: int = 20              # bits per LSH band (at most 24): random buckets stay sparse at 100k+ clips
    bands: int = 10                  # bands, each a fixed pseudo-random subset of the 63 hash bits (they overlap)
    min_band_hits: int = 3           # band collisions (from one query view) before a clip is compared in full;
    short_clip_samples: int = 8      # ... one fewer for clips of at most this many samples
    max_bucket: int = 50_000         # a bucket this full says nothing (flat frames); it is ignored
    max_mean_hamming: float = 12.0   # mean bits apart over the best temporal alignment: near duplicate
    min_overlap: float = 0.5         # share of the shorter clip's samples the alignment must cover
    # inside one recording: windows whose gap is below this are one continuous shot, never copies of each other
    # (a slow handheld shot's next window looks like the last one); a repeat further apart (a loop, a segment
    # uploaded twice into one file) must also be this close, since a continuing shot can come back to a view
    same_recording_gap_s: float = 4.0
    same_recording_max_hamming: float = 6.0


@dataclass(frozen=True)
class Signature:
    """Per sampled frame, one 63-bit DCT hash per scale, plain and mirrored, on each shifted sampling grid:
    uint64 [phases, 2 (mirror), scales, frames]. Phase 0, plain, is what the index keeps."""

    hashes: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.hashes.shape[-1])

    @property
    def plain(self) -> np.ndarray:
        """[scales, frames]: the hashes an index stores."""
        return self.hashes[0, 0]

    @property
    def views(self) -> np.ndarray:
        """[phases * 2, scales, frames]: every view a query tries."""
        return self.hashes.reshape(-1, *self.hashes.shape[-2:])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.hashes.astype(np.uint64), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Signature":
        return cls(np.load(io.BytesIO(data), allow_pickle=False))


@lru_cache(maxsize=4)
def _dct_matrix(n: int = 32) -> np.ndarray:
    """The orthonormal DCT-II matrix [n, n], one per size (read-only: it is shared)."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    m = m.astype(np.float64)
    m.flags.writeable = False
    return m


def _bits(coefficients: np.ndarray) -> np.ndarray:
    """[..., 63] coefficients -> uint64 hashes: bit i set when coefficient i is above the median."""
    median = np.median(coefficients, axis=-1, keepdims=True)
    bits = (coefficients > median).astype(np.uint64)
    weights = (np.uint64(1) << np.arange(HASH_BITS, dtype=np.uint64))
    return (bits * weights).sum(axis=-1, dtype=np.uint64)


def frame_coefficients(gray: np.ndarray, scale: float) -> np.ndarray:
    """The 63 low-frequency DCT coefficients of a centre crop of `scale` of a luma frame, at 32x32."""
    h, w = gray.shape
    ch, cw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    small = resize_area(gray[y0:y0 + ch, x0:x0 + cw], 32, 32).astype(np.float64)
    dct = _dct_matrix() @ small @ _dct_matrix().T
    return dct[:8, :8].reshape(-1)[1:]


_MIRROR_SIGN = np.array([(-1.0 if (i % 8) % 2 else 1.0) for i in range(64)])[1:]  # odd horizontal frequencies flip


def signature(clip: DecodedClip, cfg: NearDupConfig = NearDupConfig()) -> Signature:
    """Hash frames on a fixed time grid from the clip's start (and on grids shifted by fractions of a step), so a
    trimmed copy aligns with one of them at a whole-step offset."""
    start = float(clip.times[0])
    step = 1.0 / cfg.sample_fps
    grid = np.arange(0.0, max(clip.duration_s, 1e-9), step)[: cfg.max_samples]
    phases = max(1, cfg.phases)
    coefficients = np.empty((phases, len(cfg.scales), len(grid), HASH_BITS))
    cache: dict[int, np.ndarray] = {}
    for p in range(phases):
        for f, t in enumerate(grid + p * step / phases):
            index = int(np.argmin(np.abs(clip.times - start - t)))
            if index not in cache:
                gray = luma(clip.frames[index])
                cache[index] = np.stack([frame_coefficients(gray, scale) for scale in cfg.scales])
            coefficients[p, :, f] = cache[index]
    return Signature(np.stack([_bits(coefficients), _bits(coefficients * _MIRROR_SIGN)], axis=1))


def distance(query: Signature, indexed: np.ndarray, cfg: NearDupConfig) -> float:
    """Mean hamming bits at the best alignment of a query against one indexed clip's plain hashes [scales, frames]."""
    return float(distances(query, indexed[None], cfg)[0])


def distances(query: Signature, indexed: np.ndarray, cfg: NearDupConfig,
              lengths: np.ndarray | None = None) -> np.ndarray:
    """Best-alignment mean hamming of the query (every view) against C indexed clips [C, scales, frames]."""
    views = np.broadcast_to(query.views[None], (len(indexed), *query.views.shape))
    return view_distances(views, indexed, cfg, lengths)


def view_distances(views: np.ndarray, indexed: np.ndarray, cfg: NearDupConfig,
                   lengths: np.ndarray | None = None) -> np.ndarray:
    """Best-alignment mean hamming of query views [C, V, scales, Fq] against C indexed clips [C, scales, Fi]
    (zero-padded to `lengths`): the minimum over views, scale pairs and temporal offsets."""
    count, _, width = indexed.shape
    lengths = np.full(count, width) if lengths is None else np.asarray(lengths)
    fq = views.shape[-1]
    # [C, V, Sq, Si, Fq, Fi]
    ham = np.bitwise_count(views[:, :, :, None, :, None] ^ indexed[:, None, None, :, None, :]).astype(np.float32)
    # every temporal offset at once: cell (q, i) belongs to offset q - i; a one-hot product sums each diagonal
    offset = (np.arange(fq)[:, None] - np.arange(width)[None, :] + width - 1).ravel()
    onehot = np.zeros((fq * width, fq + width - 1), np.float32)
    onehot[np.arange(fq * width), offset] = 1.0
    valid = np.broadcast_to(np.arange(width)[None, None, :] < lengths[:, None, None], (count, fq, width))
    valid = valid.reshape(count, -1).astype(np.float32)  # [C, Fq*Fi]
    overlap = valid @ onehot  # [C, offsets]
    sums = (ham.reshape(*ham.shape[:4], -1) * valid[:, None, None, None, :]) @ onehot  # [C, V, Sq, Si, offsets]
    means = sums / np.maximum(overlap, 1.0)[:, None, None, None, :]
    need = np.maximum(2, np.ceil(cfg.min_overlap * np.minimum(fq, lengths)))
    means[np.broadcast_to((overlap < need[:, None])[:, None, None, None, :], means.shape)] = np.inf
    return means.reshape(count, -1).min(axis=1)

"""A generated near-duplicate evaluation set: sources, their transformed copies, hard negatives, precision/recall."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from curation.media import decode_clip, resize_area
from curation.neardup import NearDupIndex
from curation.signature import NearDupConfig, signature

WORLD = 384
TRANSFORMS = ("reencode_low_bitrate", "half_size", "crop_80", "mirror", "brighter_20", "trim_1s", "container_mkv",
              "trim_1.2s")  # the last one is beyond the list: a trim off the 1/3 s sampling grid


@lru_cache(maxsize=4)
def world(seed: int) -> np.ndarray:
    """A world of sharp-edged coloured shapes on a blotchy background, [WORLD, WORLD, 3] uint8 (read-only)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.normal(size=(WORLD // 16, WORLD // 16, 3)), np.ones((16, 16, 1)))
    image = 110 + 40 * base
    yy, xx = np.mgrid[0:WORLD, 0:WORLD]
    for _ in range(90):
        color = rng.integers(0, 255, 3)
        cy, cx, r = int(rng.integers(0, WORLD)), int(rng.integers(0, WORLD)), int(rng.integers(6, 30))
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < int(r * rng.uniform(0.3, 1.5)))
        image[mask] = color
    image = np.clip(image, 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


def camera_frames(seed: int, frames: int, *, start: int = 0, size: int = 64, shake: float = 0.0,
                  handheld: float = 1.5, region: tuple[int, int] = (128, 96)) -> list[np.ndarray]:
    """A camera drifting over world(seed) from `region` (top-left); `start` offsets time; `shake` adds jolts (px)."""
    w = world(seed)
    rng = np.random.default_rng(seed * 7 + 1)
    out = []
    for i in range(start, start + frames):
        y = region[0] + 30 * np.sin(i / 17.0) + handheld * np.sin(i * 1.3)
        x = region[1] + 1.6 * i + handheld * np.cos(i)
        if shake:
            y += rng.normal() * shake
            x += rng.normal() * shake
        y = int(np.clip(y, 0, WORLD - size))
        x = int(np.clip(x, 0, WORLD - size))
        out.append(np.ascontiguousarray(w[y:y + size, x:x + size]))
    return out


def blur(frames: list[np.ndarray], k: int = 5) -> list[np.ndarray]:
    """A k x k box blur of each frame."""
    out = []
    for f in frames:
        pad = np.pad(f.astype(np.float32), ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
        acc = sum(pad[dy:dy + f.shape[0], dx:dx + f.shape[1]] for dy in range(k) for dx in range(k))
        out.append((acc / (k * k)).astype(np.uint8))
    return out


def scale_brightness(frames: list[np.ndarray], factor: float, offset: float = 0.0) -> list[np.ndarray]:
    return [np.clip(f.astype(np.float32) * factor + offset, 0, 255).astype(np.uint8) for f in frames]


def letterbox(frames: list[np.ndarray], bar: int) -> list[np.ndarray]:
    out = []
    for f in frames:
        g = f.copy()
        g[:bar] = 0
        g[-bar:] = 0
        out.append(g)
    return out


def encode(frames: list[np.ndarray], *, fps: int = 10, bitrate: int = 0, container_format: str = "mp4") -> bytes:
    """H.264 bytes of the frames (PyAV), in memory."""
    import av
    from fractions import Fraction

    buffer = io.BytesIO()
    h, w = frames[0].shape[:2]
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if bitrate:
            stream.bit_rate = bitrate
        stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def remux(data: bytes, container_format: str = "matroska") -> bytes:
    """The same packets in another container: no re-encoding, identical decoded frames."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, mode="w", format=container_format) as target:
        video = source.streams.video[0]
        stream = target.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.dts is None:
                continue
            packet.stream = stream
            target.mux(packet)
    return out.getvalue()


def transform(frames: list[np.ndarray], name: str, source_bytes: bytes) -> bytes:
    """One of TRANSFORMS applied to a source clip, as encoded bytes."""
    if name == "reencode_low_bitrate":
        return encode(frames, bitrate=24_000)
    if name == "half_size":
        return encode([resize_area(f, f.shape[0] // 2, f.shape[1] // 2).astype(np.uint8) for f in frames])
    if name == "crop_80":
        h, w = frames[0].shape[:2]
        ch, cw = int(h * 0.8) // 2 * 2, int(w * 0.8) // 2 * 2
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return encode([np.ascontiguousarray(f[y0:y0 + ch, x0:x0 + cw]) for f in frames])
    if name == "mirror":
        return encode([np.ascontiguousarray(f[:, ::-1]) for f in frames])
    if name == "brighter_20":
        return encode(scale_brightness(frames, 1.2))
    if name == "trim_1s":
        return encode(frames[10:])
    if name == "trim_1.2s":
        return encode(frames[12:])
    if name == "container_mkv":
        return remux(source_bytes)
    raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")


@dataclass(frozen=True)
class EvalClip:
    """One clip of the evaluation set: which source it shows (None for a hard negative's own scene) and how."""

    name: str
    source: str
    kind: str  # "original", a transform name, or "other_scene"
    data: bytes


def build_set(sources: int = 8, frames: int = 60, other_scenes: int = 2) -> list[EvalClip]:
    """Originals, their TRANSFORMS, and hard negatives: other scenes (places and times) of each source's world."""
    clips = []
    for s in range(sources):
        original = camera_frames(100 + s, frames)
        data = encode(original)
        clips.append(EvalClip(f"src{s}", f"src{s}", "original", data))
        for name in TRANSFORMS:
            clips.append(EvalClip(f"src{s}-{name}", f"src{s}", name, transform(original, name, data)))
        for k in range(other_scenes):
            region = (16 + 150 * ((k + 1) % 2), 8 + 120 * (k + 1) % 260)
            scene = camera_frames(100 + s, frames, start=frames * (k + 1), region=region)
            clips.append(EvalClip(f"src{s}-scene{k}", f"src{s}-scene{k}", "other_scene", encode(scene)))
    return clips


@dataclass(frozen=True)
class EvalResult:
    """Precision and recall of near-duplicate lookups on the evaluation set, and the misses by kind."""

    true_positives: int
    false_positives: int
    false_negatives: int
    misses: tuple[str, ...]
    false_matches: tuple[str, ...]

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        wanted = self.true_positives + self.false_negatives
        return self.true_positives / wanted if wanted else 1.0


def evaluate(clips: list[EvalClip], cfg: NearDupConfig = NearDupConfig()) -> EvalResult:
    """Index the originals and the other scenes; each transformed copy must find its original and nothing else,
    and each other scene, queried against the originals alone, must find nothing."""
    decoded = {c.name: decode_clip(c.data, c.name) for c in clips}
    sigs = {name: signature(d, cfg) for name, d in decoded.items()}
    originals = [c for c in clips if c.kind == "original"]
    negatives = [c for c in clips if c.kind == "other_scene"]
    index = NearDupIndex(cfg)
    for c in originals:
        index.add(c.name, decoded[c.name].content_hash, sigs[c.name])
    tp = fp = fn = 0
    misses, false_matches = [], []
    for c in clips:
        if c.kind in ("original", "other_scene"):
            continue
        match = index.query(sigs[c.name])
        if match is not None and match.clip_id == c.source:
            tp += 1
        else:
            fn += 1
            misses.append(c.name)
            if match is not None:
                fp += 1
                false_matches.append(f"{c.name}->{match.clip_id}")
    for c in negatives:
        match = index.query(sigs[c.name])
        if match is not None:
            fp += 1
            false_matches.append(f"{c.name}->{match.clip_id}")
    return EvalResult(tp, fp, fn, tuple(misses), tuple(false_matches))


def write_set(clips: list[EvalClip], directory: str | Path) -> None:
    """The evaluation clips as files, to look at them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for c in clips:
        (directory / f"{c.name}.{'mkv' if c.kind == 'container_mkv' else 'mp4'}").write_bytes(c.data)

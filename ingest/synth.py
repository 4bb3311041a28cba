"""Synthetic media for tests, benchmarks and the demo: small PyAV-encoded videos and IMU streams, deterministic."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

FramePainter = Callable[[int], np.ndarray]  # frame index -> HxWx3 uint8 RGB


@dataclass(frozen=True)
class VideoSpec:
    """What to render: size, rate, length, codec and the scene painted on each frame."""

    width: int = 64
    height: int = 64
    fps: int = 10
    frames: int = 40
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    gop: int = 10
    bitrate: int = 0  # 0: codec default (crf-like quality)
    preset: str = "ultrafast"  # x264/x265; "veryfast" writes CABAC + deblocking, as phone encoders do
    bframes: int = 0  # B-frames (x264's bf, other encoders' max_b_frames): decode order differs from display order
    scene: str = "moving_square"  # moving_square, noise, dark, static, pan, counter, cut, head_motion
    seed: int = 0
    rotation: int = 0  # display rotation (counter-clockwise degrees) written as the stream's display matrix
    vfr: bool = False  # variable frame rate: frame durations cycle through 1x, 2x and 0.5x of 1/fps
    audio: bool = False  # add a silent AAC track
    cut_at: int = 0  # scene "cut": the frame where the hard cut happens (0: the middle)
    # container and video stream metadata, as phones write it: location, make, model, serial, creation_time...
    metadata: tuple[tuple[str, str], ...] = ()


def painter(spec: VideoSpec) -> FramePainter:
    """A function that paints frame i of the spec's scene."""
    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    background = rng.integers(40, 200, size=3, dtype=np.uint8)
    texture = rng.integers(0, 255, size=(h * 2, w * 2, 3), dtype=np.uint8)
    # a smooth texture so codecs keep it and perceptual features have structure to see
    texture = (np.cumsum(np.cumsum(texture.astype(np.float32), 0), 1))
    texture = ((texture - texture.min()) / (np.ptp(texture) + 1e-6) * 255).astype(np.uint8)
    side = max(4, min(h, w) // 4)
    color = rng.integers(0, 255, size=3, dtype=np.uint8)

    def moving_square(i: int) -> np.ndarray:
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = background
        y = int((h - side) * (0.5 + 0.4 * np.sin(i / 7.0 + spec.seed)))
        x = (i * 3 + spec.seed * 11) % max(1, w - side)
        frame[y:y + side, x:x + side] = color
        return frame

    def pan(i: int) -> np.ndarray:  # a moving viewpoint over a textured world, like head motion
        oy = int((h / 2) * (0.5 + 0.5 * np.sin(i / 11.0)))
        ox = (i * 2) % w
        return np.ascontiguousarray(texture[oy:oy + h, ox:ox + w])

    def head_motion(i: int) -> np.ndarray:  # smooth, fast yaw and pitch with a small tremor, never a jump
        jitter = np.random.default_rng(spec.seed * 7919 + i).integers(-1, 2, size=2)
        oy = int(np.clip((h / 2) * (1 + np.sin(i / 5.0 + 1.0)) + jitter[0], 0, h))
        ox = int(np.clip((w / 2) * (1 + np.sin(i / 4.0)) + jitter[1], 0, w))
        return np.ascontiguousarray(texture[oy:oy + h, ox:ox + w])

    def noise(i: int) -> np.ndarray:
        return np.random.default_rng(spec.seed * 100003 + i).integers(0, 255, (h, w, 3), dtype=np.uint8)

    def dark(i: int) -> np.ndarray:
        return (moving_square(i) // 16).astype(np.uint8)

    def static(i: int) -> np.ndarray:
        return moving_square(0)

    def counter(i: int) -> np.ndarray:  # the frame index in binary, one coarse block per bit: survives compression
        frame = np.full((h, w, 3), 128, np.uint8)
        bits, band = COUNTER_BITS, max(2, w // COUNTER_BITS)
        for bit in range(bits):
            frame[h // 4: 3 * h // 4, bit * band:(bit + 1) * band] = 235 if (i >> bit) & 1 else 20
        return frame

    other = painter(VideoSpec(width=w, height=h, scene="head_motion", seed=spec.seed + 1)) if spec.scene == "cut" \
        else None

    def cut(i: int) -> np.ndarray:
        at = spec.cut_at or spec.frames // 2
        return moving_square(i) if i < at else (255 - other(i)).astype(np.uint8)


    scenes = {"moving_square": moving_square, "pan": pan, "noise": noise, "dark": dark, "static": static,
              "counter": counter, "cut": cut, "head_motion": head_motion}
    if spec.scene not in scenes:
        raise ValueError(f"unknown scene {spec.scene!r}; known: {', '.join(sorted(scenes))}")
    return scenes[spec.scene]


COUNTER_BITS = 8


def read_counter(image: np.ndarray) -> int:
    """The frame index painted by the "counter" scene, read back from a decoded RGB frame."""
    h, w = image.shape[:2]
    band = max(2, w // COUNTER_BITS)
    luma = image[h // 4: 3 * h // 4].mean(axis=(0, 2))
    return sum(1 << bit for bit in range(COUNTER_BITS) if luma[bit * band:(bit + 1) * band].mean() > 128)


def vfr_pts(frames: int) -> list[int]:
    """Presentation times in ticks of 1/(2*fps): durations cycle 2, 4, 1 ticks (1x, 2x, 0.5x of 1/fps)."""
    pts, t = [], 0
    for i in range(frames):
        pts.append(t)
        t += (2, 4, 1)[i % 3]
    return pts


def frames_of(spec: VideoSpec) -> Iterator[np.ndarray]:
    paint = painter(spec)
    for i in range(spec.frames):
        yield paint(i)


def write_video(path: str | Path, spec: VideoSpec = VideoSpec(), frames: Iterator[np.ndarray] | None = None,
                container_format: str | None = None) -> Path:
    """Encode frames (default: the spec's scene) to path with PyAV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format=container_format) as container:
        ticks = 2 if spec.vfr else 1
        stream = container.add_stream(spec.codec, rate=spec.fps * ticks)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        stream.time_base = Fraction(1, spec.fps * ticks)
        stream.codec_context.gop_size = spec.gop
        container.metadata.update(dict(spec.metadata))
        stream.metadata.update(dict(spec.metadata))
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        if spec.bitrate:
            stream.bit_rate = spec.bitrate
        if spec.codec == "libx264":
            stream.codec_context.options = {"preset": spec.preset, "bf": str(spec.bframes)}
        elif spec.codec in ("libx265", "hevc"):
            stream.codec_context.options = {"preset": spec.preset, "x265-params": "log-level=none:bframes=0"}
        elif spec.bframes:  # mpeg4 (DivX/Xvid-like) among others
            stream.codec_context.max_b_frames = spec.bframes
        audio = container.add_stream("aac", rate=8000) if spec.audio else None
        pts = vfr_pts(spec.frames) if spec.vfr else None
        for index, image in enumerate(frames if frames is not None else frames_of(spec)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = pts[index] if pts is not None and index < len(pts) else index * ticks
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _write_silence(audio, container, seconds=spec.frames / spec.fps)
    return path


def _write_silence(stream, container, seconds: float) -> None:
    samples = int(seconds * stream.rate)
    chunk = 1024
    for start in range(0, samples, chunk):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, chunk), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = stream.rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 with one silent AAC track and no video: opens fine, holds no frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        _write_silence(container.add_stream("aac", rate=8000), container, seconds)
    return path


def png_bytes(width: int = 16, height: int = 16) -> bytes:
    """A real PNG image, made with PyAV's encoder."""
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode()])


def write_bad_inputs(directory: str | Path, good: str | Path, seed: int = 0) -> dict[str, Path]:
    """Real bad bytes derived from a good MP4: name -> path, every file named .mp4."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = Path(good).read_bytes()
    rng = np.random.default_rng(seed)
    corrupt = bytearray(data)
    stsd = data.find(b"stsd", max(0, data.find(b"moov")))
    if stsd > 0:  # keep every box size, garble the sample description the decoder is set up from
        corrupt[stsd + 4:stsd + 20] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    made = {
        "empty": b"",
        "truncated_5": data[: max(1, len(data) * 5 // 100)],
        "truncated_50": data[: len(data) // 2],
        "garbage": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "png_as_mp4": png_bytes(),
        "corrupt_moov": bytes(corrupt),
        "hls_playlist": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:1.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    }
    paths = {}
    for name, payload in made.items():
        paths[name] = directory / f"{name}.mp4"
        paths[name].write_bytes(payload)
    paths["audio_as_mp4"] = write_audio_only(directory / "audio_as_mp4.mp4")
    return paths


@dataclass(frozen=True)
class ImuSpec:
    """A synthetic IMU: sines on each axis at rate_hz, timestamps in seconds from t0."""

    seconds: float = 4.0
    rate_hz: float = 200.0
    t0: float = 0.0
    frequency_hz: float = 0.5
    seed: int = 0


IMU_COLUMNS = ("t", "ax", "ay", "az", "gx", "gy", "gz")


def imu_signal(t: np.ndarray, spec: ImuSpec) -> np.ndarray:
    """The analytic signal at times t: [len(t), 6] (accel m/s^2 with gravity on z, gyro rad/s)."""
    phase = spec.seed * 0.37
    w = 2 * np.pi * spec.frequency_hz
    return np.stack([
        np.sin(w * t + phase), np.cos(w * t + phase), 9.81 + 0.1 * np.sin(2 * w * t),
        0.5 * np.sin(w * t), 0.5 * np.cos(w * t), 0.2 * np.sin(3 * w * t + phase),
    ], axis=1)


def imu_table(spec: ImuSpec = ImuSpec()) -> np.ndarray:
    """[n, 7] float64: t, ax, ay, az, gx, gy, gz."""
    t = spec.t0 + np.arange(int(round(spec.seconds * spec.rate_hz))) / spec.rate_hz
    return np.concatenate([t[:, None], imu_signal(t, spec)], axis=1)


def write_imu_csv(path: str | Path, table: np.ndarray, columns: tuple[str, ...] = IMU_COLUMNS) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, table, delimiter=",", header=",".join(columns), comments="", fmt="%.9f")
    return path


def write_imu_npy(path: str | Path, table: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, table.astype(np.float64))
    return path


# --------------------------------------------------------------------------- a face-bearing recording

# scikit-image's bundled portrait of the astronaut Eileen Collins (public domain, NASA), read as a file from the
# installed wheel: no download, and scikit-image itself is never imported
PHOTO = ("skimage", "data/astronaut.png")
# The head-and-shoulders part of that 512x512 photograph the scenes use (x0, y0, x1, y1) ...
PHOTO_CROP = (110, 10, 340, 290)
# ... and her face in the full photograph, annotated by eye on a 20 px grid: hairline to chin, cheek to cheek
# (the detector's own box there is about 181, 58, 270, 178: forehead included)
PHOTO_FACE = (178, 72, 272, 170)


def face_photo() -> np.ndarray:
    """The bundled portrait as RGB uint8 [512, 512, 3]; FileNotFoundError names the package to install."""
    import importlib.util

    package, relative = PHOTO
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / relative
        if path.is_file():
            with av.open(str(path)) as container:
                return next(container.decode(video=0)).to_ndarray(format="rgb24")
    raise FileNotFoundError(f"{package}/{relative} is not installed: pip install scikit-image")


@dataclass(frozen=True)
class FaceSpec:
    """A head-mounted camera looking around a room with portraits of faces at several sizes: pan, small rotation and
    scale jitter. Face sizes are widths of the annotated face box on screen at zoom 1."""

    width: int = 456
    height: int = 256
    fps: int = 15
    frames: int = 60
    faces_px: tuple[int, ...] = (12, 16, 24, 36, 56, 90)
    seed: int = 0
    faces: bool = True  # False: the same room and motion without any portrait
    roll_deg: float = 3.0  # rotation jitter amplitude
    zoom: float = 0.05  # scale jitter amplitude (share)


def face_scene(spec: FaceSpec = FaceSpec()) -> tuple[list[np.ndarray], list[list[tuple[float, float, float, float]]]]:
    """The frames (RGB uint8 [H, W, 3]) and, per frame, the annotated face boxes (x0, y0, x1, y1) on screen: the
    photograph's face box carried through the camera's motion, clipped to the frame (faces less than half in view
    are left out)."""
    rng = np.random.default_rng(spec.seed)
    world_h, world_w = spec.height * 2, spec.width * 3
    texture = rng.standard_normal((world_h // 16 + 2, world_w // 16 + 2, 3))
    world = np.clip(rng.uniform(90, 160, 3) + 30 * np.kron(texture, np.ones((16, 16, 1)))[:world_h, :world_w], 0, 255)
    world = world.astype(np.float32)
    faces_world = []  # (x0, y0, x1, y1) of each face in world coordinates
    if spec.faces:
        photo = face_photo()
        x0, y0, x1, y1 = PHOTO_CROP
        head = photo[y0:y1, x0:x1]
        face = np.array(PHOTO_FACE, np.float64) - [x0, y0, x0, y0]
        face_w = PHOTO_FACE[2] - PHOTO_FACE[0]
        slots = np.linspace(0, world_w, len(spec.faces_px) + 1)
        for index, size in enumerate(spec.faces_px):
            scale = size / face_w
            w, h = max(2, int(round(head.shape[1] * scale))), max(2, int(round(head.shape[0] * scale)))
            w, h = min(w, world_w // len(spec.faces_px)), min(h, world_h)
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(head), format="rgb24").reformat(
                width=w, height=h, interpolation="AREA").to_ndarray()
            left = int(slots[index] + (slots[index + 1] - slots[index] - w) * rng.uniform(0.2, 0.8))
            top = int((world_h - h) * rng.uniform(0.3, 0.7))
            world[top:top + h, left:left + w] = picture
            faces_world.append((left + face[0] * w / head.shape[1], top + face[1] * h / head.shape[0],
                                left + face[2] * w / head.shape[1], top + face[3] * h / head.shape[0]))
    t = np.arange(spec.frames) / spec.fps
    span = spec.frames / spec.fps
    margin_x, margin_y = spec.width * 0.6, spec.height * 0.6
    centre_x = margin_x + (world_w - 2 * margin_x) * (0.5 - 0.5 * np.cos(np.pi * t / span))  # one sweep, eased
    centre_y = world_h / 2 + (world_h / 2 - margin_y) * 0.6 * np.sin(2 * np.pi * 0.4 * t + spec.seed)
    roll = np.deg2rad(spec.roll_deg) * np.sin(2 * np.pi * 0.7 * t + 1.0)
    zoom = 1 + spec.zoom * np.sin(2 * np.pi * 0.3 * t)
    v, u = np.mgrid[0:spec.height, 0:spec.width].astype(np.float32)
    u, v = u - spec.width / 2 + 0.5, v - spec.height / 2 + 0.5
    frames, boxes = [], []
    for i in range(spec.frames):
        cos, sin = np.cos(roll[i]) / zoom[i], np.sin(roll[i]) / zoom[i]
        x = centre_x[i] + cos * u - sin * v - 0.5
        y = centre_y[i] + sin * u + cos * v - 0.5
        frames.append(_bilinear(world, x, y))
        on_screen = []
        for fx0, fy0, fx1, fy1 in faces_world:
            corners = np.array([[fx0, fy0], [fx1, fy0], [fx0, fy1], [fx1, fy1]]) - [centre_x[i], centre_y[i]]
            # the inverse of the view's map: rotate back and undo the zoom
            sx = (np.cos(roll[i]) * corners[:, 0] + np.sin(roll[i]) * corners[:, 1]) * zoom[i] + spec.width / 2
            sy = (-np.sin(roll[i]) * corners[:, 0] + np.cos(roll[i]) * corners[:, 1]) * zoom[i] + spec.height / 2
            full = (sx.min(), sy.min(), sx.max(), sy.max())
            seen = (max(0.0, full[0]), max(0.0, full[1]), min(spec.width, full[2]), min(spec.height, full[3]))
            area = (full[2] - full[0]) * (full[3] - full[1])
            if seen[2] > seen[0] and seen[3] > seen[1] and (seen[2] - seen[0]) * (seen[3] - seen[1]) >= area / 2:
                on_screen.append(seen)
        boxes.append(on_screen)
    return frames, boxes


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image (float32 [H, W, 3]) sampled at (x, y) pixel positions, edges clamped; uint8."""
    h, w = image.shape[:2]
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)


def write_face_video(path: str | Path, spec: FaceSpec = FaceSpec(), preset: str = "veryfast"
                     ) -> tuple[Path, list[list[tuple[float, float, float, float]]]]:
    """The face scene as H.264 in MP4 (a keyframe a second); returns the path and the annotated boxes per frame."""
    frames, boxes = face_scene(spec)
    video = VideoSpec(width=spec.width, height=spec.height, fps=spec.fps, frames=spec.frames, gop=spec.fps,
                      preset=preset)
    return write_video(path, video, iter(frames)), boxes

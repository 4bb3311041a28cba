"""Sample partner deliveries the project makes itself: egocentric-like recordings with IMU, and planted problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ingest.synth import FaceSpec, VideoSpec, face_scene, write_imu_csv, write_video

IMU_RATE_HZ = 100.0
GRAVITY = 9.81


@dataclass(frozen=True)
class SampleRecording:
    """One file a sample partner delivers, and what the demo expects to happen to it."""

    partner: str
    delivery: str  # the folder a partner delivers in one go
    name: str  # file name inside the delivery folder, e.g. "walk-01.mp4"
    seconds: float
    expect: str  # "kept", "too_dark", "frozen", "corrupt", "near_duplicate", "revoked"
    imu: bool = True
    faces: bool = False  # people in view: portraits made from scikit-image's bundled astronaut photograph


@dataclass(frozen=True)
class SamplePlan:
    """What `make_sample_deliveries` writes: partners, their recordings, the planted problems."""

    fps: int = 10
    size: int = 128  # at least QualityConfig.min_short_side (112): smaller samples would all be too_small
    seconds: float = 8.0
    recordings: tuple[SampleRecording, ...] = field(default_factory=tuple)


def default_plan(seconds: float = 8.0, size: int = 128, fps: int = 10) -> SamplePlan:
    """Three partners (glasses, a robot fleet, a hospital), each with a planted problem. Every contract forbids faces
    (the default); the hospital's ward round films people, so its clips show them de-identified."""
    r = SampleRecording
    return SamplePlan(fps=fps, size=size, seconds=seconds, recordings=(
        r("glassco", "homes-2026-11", "kitchen-01.mp4", seconds, "kept"),
        r("glassco", "homes-2026-11", "kitchen-02.mp4", seconds, "kept"),
        r("glassco", "homes-2026-11", "cellar-dark.mp4", seconds, "too_dark"),
        r("glassco", "homes-2026-11", "workshop-03.mp4", seconds, "revoked"),
        r("robofleet", "site-a-week-47", "warehouse-01.mp4", seconds, "kept"),
        r("robofleet", "site-a-week-47", "warehouse-02.mp4", seconds, "kept"),
        r("robofleet", "site-a-week-47", "parked-frozen.mp4", seconds, "frozen"),
        r("robofleet", "site-a-week-47", "copy-of-kitchen-01.mp4", seconds, "near_duplicate"),
        r("carehouse", "ward-rounds", "ward-01.mp4", seconds, "kept"),
        r("carehouse", "ward-rounds", "ward-02.mp4", seconds, "kept"),
        r("carehouse", "ward-rounds", "ward-faces-03.mp4", seconds, "kept", faces=True),
        r("carehouse", "ward-retry", "broken-upload.mp4", seconds, "corrupt", imu=False),
    ))


DEVICES = {
    "glassco": {"kind": "glasses", "model": "GlassCo Lens 2", "mounting": "head"},
    "robofleet": {"kind": "robot", "model": "RF-300 head camera", "mounting": "robot"},
    "carehouse": {"kind": "bodycam", "model": "CareCam C1", "mounting": "chest"},
}
IMU_UNITS = {"ax": "m/s^2", "ay": "m/s^2", "az": "m/s^2", "gx": "rad/s", "gy": "rad/s", "gz": "rad/s"}


def delivery_toml(partner: str | None = None, names: list[str] = (), *, delivery: str | None = None,
                  license: str = "alliance-data-contract-1.0", device: dict[str, str] | None = None,
                  scope: tuple[str, ...] = ("pretraining", "evaluation"), expires: str = "2030-12-31",
                  imu_units: bool = True) -> str:
    """The delivery.toml a partner writes once per folder: license, consent, device, the IMU stream.

    `names` get fixed start times, so the manifest does not depend on file mtimes."""
    device = device or DEVICES.get(partner or "", {"kind": "camera", "model": "unknown", "mounting": "handheld"})
    lines = [f'partner = "{partner}"'] if partner else []
    lines += [f'delivery = "{delivery}"'] if delivery else []
    lines += [
        f'license = "{license}"',
        "[consent]",
        "scope = [" + ", ".join(f'"{s}"' for s in scope) + "]",
        f"expires = {expires}",
        "faces_allowed = false",
        "[device]",
        *(f'{key} = "{value}"' for key, value in device.items()),
        "[sensors.imu]",
        f"rate_hz = {IMU_RATE_HZ:g}",
    ]
    if imu_units:
        lines.append("units = { " + ", ".join(f'{k} = "{v}"' for k, v in IMU_UNITS.items()) + " }")
    for index, name in enumerate(sorted(names)):
        lines += [f'[recordings."{name}"]', f"start_time = 2026-11-0{1 + index % 9}T09:00:00Z"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the scene


def _world(seed: int, size: int) -> np.ndarray:
    """A textured 'room' three times the view, with a few bright objects on it."""
    rng = np.random.default_rng(seed)
    h, w = size * 3, size * 3
    noise = rng.standard_normal((h // 8 + 1, w // 8 + 1, 3))
    coarse = np.kron(noise, np.ones((8, 8, 1)))[:h, :w]
    base = rng.uniform(70, 170, size=3)
    world = np.clip(base + 35 * coarse, 0, 255)
    for _ in range(12):
        y, x = rng.integers(0, h - size // 4), rng.integers(0, w - size // 4)
        s = int(rng.integers(size // 10, size // 4))
        world[y:y + s, x:x + s] = rng.uniform(0, 255, size=3)
    return world.astype(np.uint8)


def head_motion(t: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Yaw and pitch of the head (radians) over time: slow looks around plus a walking bob."""
    phase = seed * 0.7
    yaw = 0.35 * np.sin(2 * np.pi * 0.11 * t + phase) + 0.08 * np.sin(2 * np.pi * 0.5 * t)
    pitch = 0.12 * np.sin(2 * np.pi * 0.07 * t + 2 * phase) + 0.02 * np.sin(2 * np.pi * 1.8 * t)
    return yaw, pitch


def egocentric_frames(seed: int, seconds: float, fps: int, size: int, brightness: float = 1.0,
                      frozen: bool = False):
    """Frames of a moving viewpoint over a room, a 'hand' moving in view, and a room change half-way."""
    rooms = [_world(seed * 2, size), _world(seed * 2 + 1, size)]
    n = int(round(seconds * fps))
    t = np.arange(n) / fps
    yaw, pitch = head_motion(t, seed)
    pixels_per_radian = size * 1.5
    for i in range(n):
        if frozen:
            i = 0
        world = rooms[0] if t[i] < seconds / 2 else rooms[1]
        cy = int(size + pitch[i] * pixels_per_radian)
        cx = int(size + yaw[i] * pixels_per_radian)
        frame = world[cy:cy + size, cx:cx + size].astype(np.float32)
        hand_x = int(size * (0.5 + 0.25 * np.sin(t[i] * 1.3 + seed)))
        hand_y = int(size * 0.8)
        r = size // 10
        frame[max(0, hand_y - r):hand_y + r, max(0, hand_x - r):hand_x + r] = (205, 160, 130)
        yield np.clip(frame * brightness, 0, 255).astype(np.uint8)


def imu_for(seed: int, seconds: float) -> np.ndarray:
    """IMU whose gyro is the derivative of the rendered head motion: t, ax, ay, az, gx, gy, gz."""
    t = np.arange(int(round(seconds * IMU_RATE_HZ))) / IMU_RATE_HZ
    yaw, pitch = head_motion(t, seed)
    gyro_yaw = np.gradient(yaw, t)
    gyro_pitch = np.gradient(pitch, t)
    accel_bob = 0.6 * np.sin(2 * np.pi * 1.8 * t)
    return np.stack([t, 0.1 * gyro_yaw, accel_bob, GRAVITY + 0.2 * accel_bob,
                     gyro_pitch, gyro_yaw, 0.05 * np.sin(2 * np.pi * 0.3 * t)], axis=1)


# --------------------------------------------------------------------------- writing


def _cropped_copy(source: Path, target: Path, fps: int, size: int) -> None:
    """Another partner's recording, re-encoded at a low bitrate, 80% centre crop, resized back: a near duplicate."""
    import av

    crop = int(size * 0.8)
    off = (size - crop) // 2
    frames = []
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")[off:off + crop, off:off + crop]
            frames.append(av.VideoFrame.from_ndarray(image, format="rgb24").reformat(width=size, height=size)
                          .to_ndarray(format="rgb24"))
    write_video(target, VideoSpec(width=size, height=size, fps=fps, frames=len(frames), bitrate=150_000), iter(frames))


def face_spec(size: int, fps: int, seconds: float, seed: int) -> FaceSpec:
    """A head-mounted camera looking at portraits whose faces are about a tenth, a fifth and a third of the view:
    at the demo's 64 px clips, faces of 12 to 24 px."""
    faces = tuple(max(6, int(round(size * share))) for share in (0.19, 0.28, 0.38))
    return FaceSpec(width=size, height=size, fps=fps, frames=int(round(seconds * fps)), faces_px=faces, seed=seed)


def make_sample_deliveries(root: str | Path, plan: SamplePlan | None = None) -> list[SampleRecording]:
    """Write root/{partner}/{delivery}/ folders (videos, IMU CSVs, delivery.toml); deterministic, skips what exists."""
    plan = plan or default_plan()
    root = Path(root)
    first_kept: tuple[Path, int] | None = None  # the recording the planted near duplicate copies, and its seed
    for seed, recording in enumerate(plan.recordings, start=1):
        folder = root / recording.partner / recording.delivery
        folder.mkdir(parents=True, exist_ok=True)
        video = folder / recording.name
        stem = video.stem
        if recording.expect == "near_duplicate":
            if first_kept is None:
                raise ValueError("a near_duplicate sample needs a 'kept' recording before it in the plan")
            source, seed = first_kept  # the copy carries the IMU of the recording it copies
            if not video.exists():
                _cropped_copy(source, video, plan.fps, plan.size)
        elif recording.expect == "corrupt":
            if not video.exists():
                good = folder / f".{stem}.full.mp4"
                frames = egocentric_frames(seed, recording.seconds, plan.fps, plan.size)
                write_video(good, VideoSpec(width=plan.size, height=plan.size, fps=plan.fps,
                                            frames=int(recording.seconds * plan.fps)), frames)
                data = good.read_bytes()
                video.write_bytes(data[: len(data) // 3])  # an upload cut off at a third
                good.unlink()
        elif recording.faces and not video.exists():
            frames, _ = face_scene(face_spec(plan.size, plan.fps, recording.seconds, seed))
            write_video(video, VideoSpec(width=plan.size, height=plan.size, fps=plan.fps, frames=len(frames),
                                         gop=plan.fps), iter(frames))
        elif not video.exists():
            frames = egocentric_frames(seed, recording.seconds, plan.fps, plan.size,
                                       brightness=0.06 if recording.expect == "too_dark" else 1.0,
                                       frozen=recording.expect == "frozen")
            write_video(video, VideoSpec(width=plan.size, height=plan.size, fps=plan.fps,
                                         frames=int(round(recording.seconds * plan.fps)), gop=plan.fps), frames)
        if recording.expect == "kept" and first_kept is None:
            first_kept = (video, seed)
        if recording.imu:
            imu_path = folder / f"{stem}.imu.csv"
            if not imu_path.exists():
                write_imu_csv(imu_path, imu_for(seed, recording.seconds))
    for (partner, delivery) in sorted({(r.partner, r.delivery) for r in plan.recordings}):
        names = [r.name for r in plan.recordings if (r.partner, r.delivery) == (partner, delivery)]
        (root / partner / delivery / "delivery.toml").write_text(delivery_toml(partner, names))
    return list(plan.recordings)


def delivery_folders(root: str | Path, plan: SamplePlan | None = None) -> list[tuple[str, Path]]:
    """(partner, folder) of every sample delivery, in delivery order."""
    plan = plan or default_plan()
    seen = dict.fromkeys((r.partner, r.delivery) for r in plan.recordings)
    return [(partner, Path(root) / partner / delivery) for partner, delivery in seen]

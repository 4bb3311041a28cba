"""Synthetic clips with an IMU-like stream (a moving square, a panning or a turning camera): pretraining, probe data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

DIRECTIONS = 8


@dataclass(frozen=True)
class SyntheticSample:
    """Same fields as sharding.reader.Sample, so the loop treats both alike; meta["label"] is the direction."""

    key: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    sensors: dict[str, np.ndarray] = field(default_factory=dict)  # "imu": float32 [T, 6]
    meta: dict[str, Any] = field(default_factory=dict)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, low-contrast random texture, so position is visible but the background is not the signal."""
    coarse = rng.uniform(40, 140, size=(4, 4, 3))
    ramp = np.linspace(0, 3, size)
    y0 = np.clip(np.floor(ramp).astype(int), 0, 2)
    fy = (ramp - y0)[:, None, None]
    rows = coarse[y0] * (1 - fy) + coarse[y0 + 1] * fy  # [size, 4, 3]
    fx = (ramp - y0)[None, :, None]
    image = rows[:, y0] * (1 - fx) + rows[:, y0 + 1] * fx
    return image + rng.normal(0, 4, size=(size, size, 3))


def _imu(rng: np.random.Generator, frames: int, vx: Any, vy: Any, noise: float) -> np.ndarray:
    """IMU-like float32 [frames, 6]: the accelerometer's x, y carry the velocity (vx, -vy: rows grow downwards) with
    `noise`, its z gravity; the gyroscope small noise."""
    imu = np.zeros((frames, 6), np.float32)
    imu[:, 0] = vx + rng.normal(0, noise, frames)
    imu[:, 1] = -vy + rng.normal(0, noise, frames)
    imu[:, 2] = 9.81 + rng.normal(0, 0.05, frames)
    imu[:, 3:] = rng.normal(0, 0.01, (frames, 3))
    return imu


def make_clip(label: int, seed: int, frames: int = 16, size: int = 32, stream: int = 0) -> SyntheticSample:
    """One clip: a bright square (a quarter of the frame wide) moving in direction `label` * 45 degrees at a random
    speed that crosses most of the frame, fully inside it, over a dim textured background.

    The object must dominate what the clip does: with a small, slow square on a bright texture (the first version)
    the texture was most of what a JEPA learned to predict and its features read direction no better than a random
    encoder's. `stream` separates the pretraining clips (0) from the probe's (1), so the probe never sees a training
    clip.
    """
    rng = np.random.default_rng([stream, seed, label])
    angle = label * 2 * np.pi / DIRECTIONS
    side = max(3, size // 4)
    speed = rng.uniform(0.8, 1.0) * (size - side - 2) / max(1, frames - 1)
    vy, vx = -np.sin(angle) * speed, np.cos(angle) * speed  # image rows grow downwards
    travel_y, travel_x = vy * (frames - 1), vx * (frames - 1)
    lo_y, hi_y = max(0.0, -travel_y), min(size - side, size - side - travel_y)
    lo_x, hi_x = max(0.0, -travel_x), min(size - side, size - side - travel_x)
    y0, x0 = rng.uniform(lo_y, max(lo_y, hi_y)), rng.uniform(lo_x, max(lo_x, hi_x))
    color = rng.uniform(150, 255, size=3) * rng.permutation([1.0, 0.6, 0.2])
    background = _background(rng, size) * 0.5
    clip = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        frame = background.copy()
        y, x = int(round(y0 + vy * i)), int(round(x0 + vx * i))
        frame[y:y + side, x:x + side] = color
        clip[i] = np.clip(frame, 0, 255)
    imu = _imu(rng, frames, vx, vy, noise=0.05)
    return SyntheticSample(key=f"synthetic-{stream}-{seed:08d}-{label}", frames=clip, sensors={"imu": imu},
                           meta={"label": int(label), "direction_deg": int(label * 360 // DIRECTIONS)})


def _world(rng: np.random.Generator, size: int, margin: int) -> np.ndarray:
    """A textured world `size + 2 * margin` px wide strewn with squares, about 2.5 of them in a `size` px view."""
    world = size + 2 * margin
    canvas = _background(rng, world) * 0.5
    side = max(3, size // 5)
    for _ in range(int(2.5 * world * world / (size * size))):
        top, left = rng.integers(0, world - side, size=2)
        canvas[top:top + side, left:left + side] = rng.uniform(150, 255, size=3) * rng.permutation([1.0, 0.6, 0.2])
    return canvas


def make_panning_clip(label: int, seed: int, frames: int = 16, size: int = 32, stream: int = 0) -> SyntheticSample:
    """A camera panning over a textured world strewn with squares at a constant 2-3 px/frame in direction `label` *
    45 degrees: every token moves, so what the next frames show follows from the order of the past ones (the
    frames-shuffled control of the learning test cannot learn it; with the moving square the still background was
    most of what a predictor could copy). meta["label"] is the direction the camera moves (the image moves the other
    way); the IMU's first two channels carry the camera's velocity, as in `make_turning_clip`."""
    rng = np.random.default_rng([stream, seed, label])
    angle = label * 2 * np.pi / DIRECTIONS
    speed = rng.uniform(2.0, 3.0)
    vy, vx = -np.sin(angle) * speed, np.cos(angle) * speed
    margin = int(np.ceil(speed * frames)) + 1
    canvas = _world(rng, size, margin)
    y0, x0 = margin - vy * (frames - 1) / 2, margin - vx * (frames - 1) / 2  # the path's middle at the world's
    clip = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        top, left = int(round(y0 + vy * i)), int(round(x0 + vx * i))
        clip[i] = np.clip(canvas[top:top + size, left:left + size], 0, 255)
    imu = _imu(rng, frames, vx, vy, noise=0.02)
    return SyntheticSample(key=f"panning-{stream}-{seed:08d}-{label}", frames=clip, sensors={"imu": imu},
                           meta={"label": int(label), "direction_deg": int(label * 360 // DIRECTIONS)})


def make_turning_clip(seed: int, frames: int = 16, size: int = 32, stream: int = 3, hold: int = 2) -> SyntheticSample:
    """A clip for the action-conditioned predictor: a camera moving over a textured world strewn with squares (ego-
    motion, as in egocentric video), at a constant speed in a direction redrawn every `hold` frames (a tubelet), so
    what the next frames show is something the past frames cannot tell and the IMU does.

    The first version moved one square over a static background and turned once per clip: for every transition but
    one the past frames predicted the next step, and most tokens never changed, so a predictor that ignored the IMU
    lost nothing (teacher-forcing L1 0.1841 with the true and with the shifted IMU). Here every token moves with the
    camera (measured: an 80-step predictor still ignores the IMU; see tests/training/test_action.py). The IMU's
    first two channels carry the camera's velocity per frame (vx, -vy in px/frame: the image moves
    the other way), the third gravity, the gyroscope's z channel the turn angle at each frame a new direction starts.
    meta["turn_frames"] lists them; meta["camera"] is the crop's top-left corner per frame, [T, 2] (y, x).
    """
    rng = np.random.default_rng([stream, seed])
    speed = rng.uniform(2.0, 3.0)  # px/frame: 4-6 px a tubelet, more than half a patch of 8 px
    margin = int(np.ceil(speed * frames)) + 1
    canvas = _world(rng, size, margin)
    y = x = float(margin)
    angle = 0.0
    vy, vx = np.zeros(frames), np.zeros(frames)
    camera = np.zeros((frames, 2))
    turns, turn_angles = [], []
    for i in range(frames):
        if i % hold == 0:  # a segment is one tubelet: frames i .. i + hold - 1 move one way
            length = speed * hold
            for _ in range(32):
                candidate = float(rng.uniform(0, 2 * np.pi))
                end_y, end_x = y - np.sin(candidate) * length, x + np.cos(candidate) * length
                if 0 <= end_y <= 2 * margin and 0 <= end_x <= 2 * margin:
                    break
            else:  # nothing fits: head back to the middle
                candidate = float(np.arctan2(y - margin, margin - x))
            if i > 0:
                turns.append(i)
                turn_angles.append(float(np.angle(np.exp(1j * (candidate - angle)))))
            angle = candidate
        vy[i], vx[i] = -np.sin(angle) * speed, np.cos(angle) * speed
        if i > 0:  # frame 0 is where the clip starts; its velocity is the one it arrives with
            y, x = float(np.clip(y + vy[i], 0, 2 * margin)), float(np.clip(x + vx[i], 0, 2 * margin))
        camera[i] = y, x
    clip = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        top, left = int(round(camera[i, 0])), int(round(camera[i, 1]))
        clip[i] = np.clip(canvas[top:top + size, left:left + size], 0, 255)
    imu = _imu(rng, frames, vx, vy, noise=0.02)
    for frame, turn_angle in zip(turns, turn_angles):
        imu[frame, 5] += turn_angle
    return SyntheticSample(key=f"turning-{stream}-{seed:08d}", frames=clip, sensors={"imu": imu},
                           meta={"turn_frames": turns, "camera": camera})


DIRECTIONAL_WORLDS = {"square": make_clip, "panning": make_panning_clip}  # a label per clip: its direction
WORLDS = (*DIRECTIONAL_WORLDS, "turning")


class SyntheticReader:
    """An endless stream with ShardReader's interface: sample g of the stream is a pure function of (seed, g). `world`:
    the moving square (`make_clip`), the panning camera (`make_panning_clip`) or the turning camera of the
    action-conditioned objective (`make_turning_clip`)."""

    def __init__(self, *, frames: int = 16, size: int = 32, seed: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1, epoch: int = 0, world: str = "square", **_ignored: Any):
        if world not in WORLDS:
            raise ValueError(f"synthetic world {world!r}: use one of {', '.join(WORLDS)}")
        self.frames, self.size, self.seed, self.world = frames, size, seed, world
        self.stride = world_size * num_workers
        self.offset = rank * num_workers + worker
        self.position = 0

    def __iter__(self) -> Iterator[SyntheticSample]:
        while True:
            g = self.position * self.stride + self.offset
            self.position += 1
            seed = self.seed * 1_000_003 + g
            if self.world == "turning":
                yield make_turning_clip(seed=seed, frames=self.frames, size=self.size)
            else:
                yield DIRECTIONAL_WORLDS[self.world](g % DIRECTIONS, seed=seed, frames=self.frames, size=self.size)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def labelled_set(count: int, seed: int, frames: int = 16, size: int = 32,
                 world: str = "square") -> tuple[np.ndarray, np.ndarray]:
    """`count` clips (balanced over directions) of the moving square or the panning camera as uint8
    [N, T, H, W, 3] and labels [N]; stream 1, apart from training's."""
    if world not in DIRECTIONAL_WORLDS:
        raise ValueError(f"labelled world {world!r}: use one of {', '.join(DIRECTIONAL_WORLDS)}")
    make = DIRECTIONAL_WORLDS[world]
    clips = [make(i % DIRECTIONS, seed=seed * 1_000_003 + i, frames=frames, size=size, stream=1)
             for i in range(count)]
    return np.stack([c.frames for c in clips]), np.array([c.meta["label"] for c in clips], np.int64)

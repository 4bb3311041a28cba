"""Synthetic clips whose content moves in one of 8 directions, with a matching IMU-like stream: pretraining and probe data."""

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


def _scene(rng: np.random.Generator, height: int, width: int, size: int) -> np.ndarray:
    """A smooth background with a dozen coloured blocks about a patch in size: structure every token can see."""
    coarse = rng.uniform(40, 140, size=(4, 4, 3))
    ys = np.linspace(0, 3, height)
    xs = np.linspace(0, 3, width)
    y0 = np.clip(np.floor(ys).astype(int), 0, 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    rows = coarse[y0] * (1 - fy) + coarse[y0 + 1] * fy  # [height, 4, 3]
    image = rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx
    for _ in range(max(6, height * width // (size * 6))):
        h, w = rng.integers(max(2, size // 10), max(3, size // 4), size=2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        image[top:top + h, left:left + w] = rng.uniform(0, 255, size=3)
    return image + rng.normal(0, 4, size=image.shape)


def make_clip(label: int, seed: int, frames: int = 16, size: int = 32, stream: int = 0) -> SyntheticSample:
    """One clip: a scene of coloured blocks moving in direction `label` * 45 degrees (counter-clockwise from
    "right") at a random speed, as when the head turns in egocentric video; the IMU's gyroscope turns with it.

    `stream` separates the pretraining clips (0) from the probe's (1), so the probe never sees a training clip.
    """
    rng = np.random.default_rng([stream, seed, label])
    angle = label * 2 * np.pi / DIRECTIONS + rng.uniform(-0.15, 0.15)
    speed = rng.uniform(0.6, 1.1) * size / 32
    vy, vx = -np.sin(angle) * speed, np.cos(angle) * speed  # content velocity; image rows grow downwards
    margin = int(np.ceil(speed * (frames - 1))) + 1
    scene = _scene(rng, size + margin, size + margin, size)
    # the view moves against the content: offsets stay inside the scene for every frame
    oy0 = vy * (frames - 1) if vy > 0 else 0.0
    ox0 = vx * (frames - 1) if vx > 0 else 0.0
    clip = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        oy, ox = int(round(oy0 - vy * i)), int(round(ox0 - vx * i))
        clip[i] = np.clip(scene[oy:oy + size, ox:ox + size], 0, 255)
    # IMU-like: accelerometer holds gravity, gyroscope turns against the image motion (yaw, pitch), plus noise
    imu = np.zeros((frames, 6), np.float32)
    imu[:, :3] = rng.normal(0, 0.05, (frames, 3))
    imu[:, 2] += 9.81
    imu[:, 3] = -vy * 0.1 + rng.normal(0, 0.01, frames)
    imu[:, 4] = -vx * 0.1 + rng.normal(0, 0.01, frames)
    imu[:, 5] = rng.normal(0, 0.01, frames)
    return SyntheticSample(key=f"synthetic-{stream}-{seed:08d}-{label}", frames=clip, sensors={"imu": imu},
                           meta={"label": int(label), "direction_deg": int(label * 360 // DIRECTIONS)})


class SyntheticReader:
    """An endless stream with ShardReader's interface: sample g of the stream is a pure function of (seed, g)."""

    def __init__(self, *, frames: int = 16, size: int = 32, seed: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1, epoch: int = 0, **_ignored: Any):
        self.frames, self.size, self.seed = frames, size, seed
        self.stride = world_size * num_workers
        self.offset = rank * num_workers + worker
        self.position = 0

    def __iter__(self) -> Iterator[SyntheticSample]:
        while True:
            g = self.position * self.stride + self.offset
            self.position += 1
            yield make_clip(g % DIRECTIONS, seed=self.seed * 1_000_003 + g, frames=self.frames, size=self.size)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def labelled_set(count: int, seed: int, frames: int = 16, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`count` clips (balanced over directions) as uint8 [N, T, H, W, 3] and labels [N]; seeds apart from training's."""
    clips = [make_clip(i % DIRECTIONS, seed=seed * 1_000_003 + i, frames=frames, size=size,
                       stream=1)
             for i in range(count)]
    return np.stack([c.frames for c in clips]), np.array([c.meta["label"] for c in clips], np.int64)

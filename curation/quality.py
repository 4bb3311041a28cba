"""Quality signals of one clip (luma, clipping, blur, letterbox, frozen content, motion profile) and the verdict."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from alliance.errors import ConfigError
from curation.media import DecodedClip, luma, resize_area, sample_indices

ANALYSIS_SIDE = 64  # signals are measured at this short side, so thresholds do not depend on resolution


SIGNALS_VERSION = 2  # 1: sharpness as Laplacian/luma variance at 64 px, motion as whole-pixel shifts at 64 px


@dataclass(frozen=True)
class QualityConfig:
    """Every threshold of the quality stage, calibrated on real footage (docs/curation.md says what each means)."""

    min_duration_s: float = 1.0
    min_frames: int = 8
    # half the 224 px crop the JEPA presets train at: a smaller source would be upscaled more than 2x
    min_short_side: int = 112           # of the source recording, in pixels
    min_luma: float = 30.0              # mean luma below: too_dark
    max_dark_fraction: float = 0.85     # share of pixels with luma < 16 above: too_dark
    max_luma: float = 225.0             # mean luma above: too_bright
    max_bright_fraction: float = 0.6    # share of pixels with luma > 239 above: too_bright
    max_letterbox_fraction: float = 0.2  # share of the frame in black bars above: letterboxed
    min_frame_diff: float = 0.2         # median absolute luma change between frames below: frozen
    # detail of the finest band kept over the next coarser one (sharpness); real footage at training resolution
    # measures 0.27-0.73, a Gaussian blur of sigma 2 px 0.12-0.13 (docs/curation.md)
    min_sharpness: float = 0.17
    # motion profile from the IMU when the clip has one
    static_gyro_rms: float = 0.02       # rad/s; below both static bounds: camera_static (lying on a table)
    static_accel_std: float = 0.05      # m/s^2
    shake_gyro_rms: float = 3.0         # rad/s; above either shake bound: violent_shake
    shake_accel_std: float = 6.0        # m/s^2
    # motion profile from frames when it has none: the view's own motion, read off the picture. A camera left
    # running: the view does not drift AND nothing in it moves (a hand turning a box before a still phone is kept)
    static_speed: float = 0.001         # short sides per second the view drifts (0.13 px per 0.5 s at 128 px)
    static_frame_diff: float = 0.5      # median luma change between frames, levels (what noise alone gives)
    shake_jitter: float = 1.8           # median change of the view's velocity every 0.1 s, short sides per second
    check_camera_static: bool = True
    check_violent_shake: bool = True

    def thresholds(self) -> dict[str, list[float]]:
        """The thresholds drawn on each signal's histogram in the report."""
        return {
            "duration_s": [self.min_duration_s], "short_side": [self.min_short_side],
            "luma_mean": [self.min_luma, self.max_luma], "dark_fraction": [self.max_dark_fraction],
            "bright_fraction": [self.max_bright_fraction], "letterbox_fraction": [self.max_letterbox_fraction],
            "frame_diff_median": [self.min_frame_diff, self.static_frame_diff],
            "sharpness": [self.min_sharpness],
            "gyro_rms": [self.static_gyro_rms, self.shake_gyro_rms],
            "accel_std": [self.static_accel_std, self.shake_accel_std],
            "motion_speed": [self.static_speed], "motion_jitter": [self.shake_jitter],
        }


@dataclass(frozen=True)
class QualitySignals:
    """What the quality stage measured on one clip; stored in the selection table so thresholds can change later."""

    duration_s: float
    frames: int
    short_side: int
    luma_mean: float
    luma_std: float
    dark_fraction: float
    bright_fraction: float
    letterbox_fraction: float
    frame_diff_mean: float
    sharpness: float | None       # None: no frame had enough structure to judge (a plain wall, fog, a dark room)
    motion_source: str            # "imu" or "frames"
    gyro_rms: float | None        # rad/s, from the IMU
    accel_std: float | None       # m/s^2, from the IMU
    motion_speed: float           # the view's drift, short sides per second (sub-pixel phase correlation)
    motion_jitter: float          # median change of the view's velocity every 0.1 s, short sides per second
    frame_diff_median: float | None = None  # robust to keyframe pulses of a re-encoded still; None in old tables
    version: int = 1              # SIGNALS_VERSION of the code that measured them; old tables read as 1

    def to_json(self) -> str:
        return json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "QualitySignals":
        data = json.loads(text)
        values = {f.name: data.get(f.name) for f in fields(cls)}
        values["version"] = values["version"] or 1
        return cls(**values)


def parse_overrides(pairs: list[str] | tuple[str, ...], base: QualityConfig = QualityConfig()) -> QualityConfig:
    """QualityConfig with NAME=VALUE overrides (as typed on the command line), each checked and converted."""
    known = {f.name: f.type for f in fields(QualityConfig)}
    changes: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ConfigError(f"--quality {pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        kind = known[name]
        try:
            if kind in (bool, "bool"):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                changes[name] = raw.lower() in ("true", "1", "yes")
            else:
                changes[name] = int(raw) if kind in (int, "int") else float(raw)
        except ValueError as e:
            raise ConfigError(f"--quality {pair!r}: {raw!r} is not a valid {getattr(kind, '__name__', kind)}") from e
    return replace(base, **changes)


REASONS = ("too_short", "too_small", "too_dark", "too_bright", "letterboxed", "frozen", "blurry",
           "camera_static", "violent_shake")


def measure(clip: DecodedClip, *, source_short_side: int | None = None, gyro_rms: float | None = None,
            accel_std: float | None = None, samples: int = 16) -> QualitySignals:
    """The signals of a decoded clip; IMU figures come from the clip table (ingest measured them at full rate)."""
    y_all = luma(clip.frames)
    picks = sample_indices(clip.times, samples)
    h, w = y_all.shape[1:3]
    scale = ANALYSIS_SIDE / min(h, w)
    ah, aw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    small = np.stack([resize_area(y_all[i], ah, aw) for i in picks])
    diffs = np.abs(np.diff(y_all, axis=0)).mean(axis=(1, 2)) if len(y_all) > 1 else np.zeros(1)
    speed, jitter = camera_motion(y_all, clip.times)
    has_imu = gyro_rms is not None and accel_std is not None and math.isfinite(gyro_rms) and math.isfinite(accel_std)
    return QualitySignals(
        duration_s=clip.duration_s,
        frames=int(len(clip.frames)),
        short_side=int(source_short_side or min(h, w)),
        luma_mean=float(y_all.mean()),
        luma_std=float(y_all.std()),
        dark_fraction=float((y_all < 16).mean()),
        bright_fraction=float((y_all > 239).mean()),
        letterbox_fraction=_letterbox_fraction(small),
        frame_diff_mean=float(diffs.mean()),
        sharpness=sharpness(y_all[picks[:: max(1, len(picks) // 8)]]),
        motion_source="imu" if has_imu else "frames",
        gyro_rms=float(gyro_rms) if has_imu else None,
        accel_std=float(accel_std) if has_imu else None,
        motion_speed=speed,
        motion_jitter=jitter,
        frame_diff_median=float(np.median(diffs)),
        version=SIGNALS_VERSION,
    )


def quality_reason(signals: QualitySignals, cfg: QualityConfig) -> str | None:
    """The first reason this clip fails the quality bar, or None if it passes."""
    s = signals
    if s.duration_s < cfg.min_duration_s or s.frames < cfg.min_frames:
        return "too_short"
    if s.short_side < cfg.min_short_side:
        return "too_small"
    if s.luma_mean < cfg.min_luma or s.dark_fraction > cfg.max_dark_fraction:
        return "too_dark"
    if s.luma_mean > cfg.max_luma or s.bright_fraction > cfg.max_bright_fraction:
        return "too_bright"
    if s.letterbox_fraction > cfg.max_letterbox_fraction:
        return "letterboxed"
    if (s.frame_diff_median if s.frame_diff_median is not None else s.frame_diff_mean) < cfg.min_frame_diff:
        return "frozen"
    if s.sharpness is not None and s.sharpness < cfg.min_sharpness:
        return "blurry"
    if s.motion_source == "imu":
        static = s.gyro_rms < cfg.static_gyro_rms and s.accel_std < cfg.static_accel_std
        shake = s.gyro_rms > cfg.shake_gyro_rms or s.accel_std > cfg.shake_accel_std
    else:
        change = s.frame_diff_median if s.frame_diff_median is not None else s.frame_diff_mean
        static = s.motion_speed < cfg.static_speed and change < cfg.static_frame_diff
        shake = s.motion_jitter > cfg.shake_jitter
    if cfg.check_camera_static and static:
        return "camera_static"
    if cfg.check_violent_shake and shake:
        return "violent_shake"
    return None


def quality_detail(reason: str, signals: QualitySignals, cfg: QualityConfig, clip_key: str) -> str:
    """A sentence for a person: which clip, which signal, the bound it crossed, and what to do."""
    s = signals
    text = {
        "too_short": f"lasts {s.duration_s:.2f} s / {s.frames} frames; the minimum is {cfg.min_duration_s} s and "
                     f"{cfg.min_frames} frames",
        "too_small": f"source short side is {s.short_side} px; the minimum is {cfg.min_short_side} px",
        "too_dark": f"mean luma {s.luma_mean:.1f} (min {cfg.min_luma}), dark pixels {s.dark_fraction:.0%} "
                    f"(max {cfg.max_dark_fraction:.0%})",
        "too_bright": f"mean luma {s.luma_mean:.1f} (max {cfg.max_luma}), clipped pixels {s.bright_fraction:.0%} "
                      f"(max {cfg.max_bright_fraction:.0%})",
        "letterboxed": f"{s.letterbox_fraction:.0%} of the frame is black bars (max {cfg.max_letterbox_fraction:.0%})",
        "frozen": f"median frame change "
                  f"{s.frame_diff_median if s.frame_diff_median is not None else s.frame_diff_mean:.2f} luma levels "
                  f"(min {cfg.min_frame_diff}): the picture does not change",
        "blurry": f"sharpness {s.sharpness or 0.0:.3f} (detail of the finest band over the next coarser one, "
                  f"min {cfg.min_sharpness}): the picture is out of focus or smeared",
        "camera_static": (f"IMU gyro rms {s.gyro_rms} rad/s, accel std {s.accel_std} m/s^2: the camera lies still"
                          if s.motion_source == "imu" else
                          f"the view drifts {s.motion_speed:.4f} short sides per second (min {cfg.static_speed}) and "
                          f"the picture changes by {s.frame_diff_median or s.frame_diff_mean:.2f} luma levels "
                          f"(min {cfg.static_frame_diff}): a camera left running where nothing happens"),
        "violent_shake": (f"IMU gyro rms {s.gyro_rms} rad/s (max {cfg.shake_gyro_rms}), accel std {s.accel_std} m/s^2 "
                          f"(max {cfg.shake_accel_std})" if s.motion_source == "imu" else
                          f"the view's velocity changes by {s.motion_jitter:.2f} short sides per second every 0.1 s "
                          f"(max {cfg.shake_jitter})"),
    }[reason]
    return f"{clip_key}: {text}; change QualityConfig if this bound does not suit this partner's footage"


# a frame with too little in it to judge its focus (a plain wall, fog): little detail at a quarter of the clip's size
# (Laplacian variance, luma levels^2) and a nearly uniform picture (luma std); a blurred scene keeps its contrast
STRUCTURE_FLOOR = 20.0
UNIFORM_STD = 12.0


def _laplacian(image: np.ndarray) -> np.ndarray:
    return image[1:-1, :-2] + image[1:-1, 2:] + image[:-2, 1:-1] + image[2:, 1:-1] - 4 * image[1:-1, 1:-1]


def _half(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def sharpness(frames: np.ndarray) -> float | None:
    """How much of a picture's detail survives at its finest scale: the Laplacian's energy at half the clip's size
    over its energy at a quarter, median over the frames (luma [N, H, W] at the clip's resolution). Contrast and
    brightness cancel out; blur takes the fine band first (sigma 2 px: about 0.12, sharp real footage 0.27-0.73).
    Frames with nothing to judge (little detail and a nearly uniform picture: a plain wall) are left out; None when
    every frame is one. A strongly blurred scene has little detail too, but keeps its contrast, and is judged."""
    ratios = []
    for frame in frames:
        half = _half(frame)
        quarter = _half(half)
        if min(quarter.shape) < 3:
            continue
        coarse = float(_laplacian(quarter).var())
        if coarse < STRUCTURE_FLOOR and float(quarter.std()) < UNIFORM_STD:
            continue
        # the floor keeps codec noise (a few levels^2 in the finest band) from passing for detail in a blurred scene
        ratios.append(float(_laplacian(half).var()) / (coarse + 2 * STRUCTURE_FLOOR))
    return float(np.median(ratios)) if ratios else None


MOTION_SIDE = 128       # the camera's motion is read at this short side
DRIFT_BASELINE_S = 0.5  # frames this far apart measure the drift
VELOCITY_STEP_S = 0.1   # and the velocity, every this long


def camera_motion(y_all: np.ndarray, times: np.ndarray, pairs: int = 8) -> tuple[float, float]:
    """(drift, jitter) of the view from the picture: the median shift between frames DRIFT_BASELINE_S apart, and the
    median change of velocity between consecutive VELOCITY_STEP_S steps, both in short sides per second. Sub-pixel
    phase correlation at MOTION_SIDE, on fixed time steps: a 2 s and a 4 s clip of the same motion measure alike."""
    if len(y_all) < 2:
        return 0.0, 0.0
    h, w = y_all.shape[1:3]
    scale = MOTION_SIDE / min(h, w)
    size = (max(8, int(round(h * scale))), max(8, int(round(w * scale))))
    short = float(min(size))
    cache: dict[int, np.ndarray] = {}

    def spectrum(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = _spectrum(resize_area(y_all[i], *size))
        return cache[i]

    def at(t: float) -> int:
        return int(np.clip(np.searchsorted(times, t), 0, len(times) - 1))

    span = float(times[-1] - times[0])
    baseline = min(DRIFT_BASELINE_S, span)
    drifts = []
    for t in np.linspace(times[0], times[-1] - baseline, pairs):
        a, b = at(t), at(t + baseline)
        if b > a:
            dx, dy = _shift(spectrum(a), spectrum(b), size)
            drifts.append(math.hypot(dx, dy) / short / float(times[b] - times[a]))
    velocities = []
    steps = int(span / VELOCITY_STEP_S)
    for k in np.linspace(0, max(0, steps - 1), min(steps, 2 * pairs)).astype(int) if steps >= 2 else []:
        a, b, c = at(times[0] + k * VELOCITY_STEP_S), at(times[0] + (k + 1) * VELOCITY_STEP_S), \
            at(times[0] + (k + 2) * VELOCITY_STEP_S)
        if a < b < c:
            v1 = np.asarray(_shift(spectrum(a), spectrum(b), size)) / float(times[b] - times[a])
            v2 = np.asarray(_shift(spectrum(b), spectrum(c), size)) / float(times[c] - times[b])
            velocities.append(float(np.hypot(*(v2 - v1))) / short)
    drift = float(np.median(drifts)) if drifts else 0.0
    jitter = float(np.median(velocities)) if velocities else 0.0
    return drift, jitter


def _spectrum(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    return np.fft.rfft2((image - image.mean()) * window)


def _shift(a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """(dx, dy) in pixels from picture a to picture b: the phase correlation peak, refined to a sub-pixel position
    by a parabola through it and its neighbours."""
    h, w = size
    cross = b * np.conj(a)
    cross /= np.abs(cross) + 1e-6
    surface = np.fft.irfft2(cross, s=(h, w))
    y, x = np.unravel_index(int(np.argmax(surface)), surface.shape)

    def refine(minus: float, centre: float, plus: float) -> float:
        curve = minus - 2 * centre + plus
        return 0.0 if curve >= 0 else 0.5 * (minus - plus) / curve

    dx = x + refine(surface[y, (x - 1) % w], surface[y, x], surface[y, (x + 1) % w])
    dy = y + refine(surface[(y - 1) % h, x], surface[y, x], surface[(y + 1) % h, x])
    return (dx - w if dx > w / 2 else dx), (dy - h if dy > h / 2 else dy)


def _letterbox_fraction(small: np.ndarray) -> float:
    """Share of the frame in uniform black bars at the borders, consistent over the sampled frames."""
    dark = small.max(axis=0) < 24  # dark in every sampled frame
    rows = dark.mean(axis=1) > 0.98
    cols = dark.mean(axis=0) > 0.98

    def run(flags: np.ndarray) -> int:
        n = 0
        for flag in flags:
            if not flag:
                break
            n += 1
        return n

    h, w = dark.shape
    top, bottom = run(rows), run(rows[::-1])
    left, right = run(cols), run(cols[::-1])
    if top + bottom >= h or left + right >= w:
        return 0.0  # an entirely dark frame is too_dark, not letterboxed
    return float(1.0 - (h - top - bottom) * (w - left - right) / (h * w))

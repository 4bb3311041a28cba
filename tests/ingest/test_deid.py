"""Faces are hidden where the contract forbids them, and nothing else identifying leaves the landing area: acceptance
tests on a real portrait (scikit-image's bundled astronaut photograph) moved like a head-mounted camera."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from ingest import face_detector
from ingest.clips import ClipConfig, RecordingInfo, cut_window, plan_recording, sha256_file
from ingest.deid import DeidConfig, camera_path, detect_size, face_regions, faces_allowed, mosaic
from ingest.errors import DecodeError
from ingest.face_detector import detector
from ingest.synth import PHOTO_FACE, FaceSpec, VideoSpec, face_photo, write_face_video, write_video
from pipelines.sources import refs_from_folder

CONFIG = ClipConfig(clip_s=4.0)
ALLOWED = json.dumps({"faces_allowed": True})
FORBIDDEN = json.dumps({"faces_allowed": False})
MIN_FACE = 12  # px in the clip: the smallest face the bar covers


def cut(path: Path, meta_json: str, out: Path, config: ClipConfig = CONFIG):
    """The first window of a recording cut as a clip under this contract metadata: (row, decoded RGB frames)."""
    rec = RecordingInfo(sha256_file(path), "partner", "delivery", str(path), meta_json=meta_json)
    task = next(t for t in plan_recording(str(path), rec, (), config))
    outputs, _ = cut_window(task, out)
    (clip,) = [p for p in outputs[0].files.values() if p.endswith(".mp4")]
    with av.open(clip) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return outputs[0].row, frames, clip


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def detail(y: np.ndarray) -> float:
    return float(np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean())


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """4 s at 15 fps, 456x256 (the clip's size: boxes need no scaling): portraits with faces 12 to 90 px wide, cut
    once with faces forbidden and once allowed (the same encoder on the same frames: the reference)."""
    root = tmp_path_factory.mktemp("faces")
    path, boxes = write_face_video(root / "faces.mp4", FaceSpec(seed=0))
    hidden = cut(path, FORBIDDEN, root / "hidden")
    clear = cut(path, ALLOWED, root / "clear")
    return boxes, hidden, clear


def test_the_annotated_face_is_where_the_detector_sees_it():
    photo = face_photo()
    found = detector()(photo, 0.5)
    assert len(found) == 1
    x0, y0, x1, y1 = PHOTO_FACE
    cx, cy = (found[0, 0] + found[0, 2]) / 2, (found[0, 1] + found[0, 3]) / 2
    assert x0 < cx < x1 and y0 < cy < y1


def coverage(boxes, hidden: np.ndarray, clear: np.ndarray) -> tuple[int, int, list, float]:
    """Annotated faces >= MIN_FACE scored, how many are hidden (luma change >= 8 and at most half the detail left),
    the weak ones (frame, width, change, detail kept), and the mean luma change beyond 3x every face's box."""
    outside = np.ones(hidden.shape[:3], bool)
    scored, covered, weak = 0, 0, []
    for index, frame_boxes in enumerate(boxes):
        before, after = luma(clear[index]), luma(hidden[index])
        for x0, y0, x1, y1 in frame_boxes:
            a, b, c, d = int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))
            w, h = x1 - x0, y1 - y0
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            outside[index, max(0, int(cy - 1.5 * h)):int(cy + 1.5 * h), max(0, int(cx - 1.5 * w)):int(cx + 1.5 * w)] \
                = False
            if min(w, h) < MIN_FACE:
                continue
            scored += 1
            change = np.abs(after[b:d, a:c] - before[b:d, a:c]).mean()
            kept_detail = detail(after[b:d, a:c]) / max(1e-6, detail(before[b:d, a:c]))
            if change >= 8 and kept_detail <= 0.5:  # large change, and at most half the detail left
                covered += 1
            else:
                weak.append((index, round(w), round(float(change), 1), round(kept_detail, 2)))
    return scored, covered, weak, float(np.abs(luma(hidden) - luma(clear))[outside].mean())


def test_faces_12_px_and_up_are_hidden_in_every_frame_and_the_rest_is_left_alone(faces):
    boxes, (row, hidden, _), (clear_row, clear, _) = faces
    assert len(hidden) == len(clear) == len(boxes) == 60
    scored, covered, weak, away = coverage(boxes, hidden, clear)
    assert scored >= 100
    assert covered / scored >= 0.95, weak
    assert away < 2.0  # only the encoder's own choices move pixels away from the faces
    record = json.loads(row["deid"])
    assert record["faces_allowed"] is False and record["model"].startswith("centerface")
    assert record["faces_found"] >= 6 and record["frames_with_faces"] == 60 and record["threshold"] == 0.2
    assert json.loads(row["recording_meta"])["deid"] == record  # shards carry recording_meta whole
    assert json.loads(clear_row["deid"])["faces_allowed"] is True and row["clip_id"] != clear_row["clip_id"]


def test_faces_are_hidden_at_30_fps_too(tmp_path):
    # partners film at 30 fps (the benchmark's source): 9 frames between detections, and a face that left the view
    # once was matched across a missed detection to another face, smearing the room between them
    path, boxes = write_face_video(tmp_path / "faces30.mp4", FaceSpec(seed=1, fps=30, frames=120))
    row, hidden, _ = cut(path, FORBIDDEN, tmp_path / "hidden")
    _, clear, _ = cut(path, ALLOWED, tmp_path / "clear")
    scored, covered, weak, away = coverage(boxes, hidden, clear)
    assert scored >= 200 and covered / scored >= 0.95, weak
    assert away < 2.0, away  # 1.2 here; the wrong match made it 1.97
    assert json.loads(row["deid"])["frames_with_faces"] == 120


def test_the_detector_run_again_finds_almost_none_of_the_hidden_faces(faces):
    boxes, (_, hidden, _), (_, clear, _) = faces
    config = CONFIG.deid
    find = detector(config.provider, config.precision)

    def found(frames, annotated) -> tuple[int, int]:
        hits = total = 0
        for frame, frame_boxes in zip(frames, annotated, strict=True):
            up = av.VideoFrame.from_ndarray(frame, format="rgb24").to_ndarray(
                width=int(frame.shape[1] * config.detect_scale), height=int(frame.shape[0] * config.detect_scale),
                format="rgb24")
            detections = find(up, config.threshold, config.detect_scale)
            for x0, y0, x1, y1 in frame_boxes:
                if min(x1 - x0, y1 - y0) < MIN_FACE:
                    continue
                total += 1
                hits += any(x0 <= (d[0] + d[2]) / 2 <= x1 and y0 <= (d[1] + d[3]) / 2 <= y1 for d in detections)
        return hits, total

    hits, total = found(hidden, boxes)
    assert hits <= 0.02 * total, (hits, total)
    if find.precision == "int8":  # nor does the model as shipped: the bar is not met by a weaker re-detector
        find = detector(config.provider, "float32")
        hits, total = found(hidden, boxes)
        assert hits <= 0.02 * total, (hits, total)
        find = detector(config.provider, config.precision)
    clear_hits, clear_total = found(clear[::4], boxes[::4])  # the same detector does see them in clear
    assert clear_hits >= 0.9 * clear_total, (clear_hits, clear_total)


def test_a_video_without_faces_is_left_untouched(tmp_path):
    path, boxes = write_face_video(tmp_path / "room.mp4", FaceSpec(seed=0, faces=False, frames=30))
    assert not any(boxes)
    row, hidden, _ = cut(path, FORBIDDEN, tmp_path / "hidden", ClipConfig(clip_s=2.0))
    _, clear, _ = cut(path, ALLOWED, tmp_path / "clear", ClipConfig(clip_s=2.0))
    assert np.abs(luma(hidden) - luma(clear)).mean() < 0.5
    record = json.loads(row["deid"])
    assert record["frames_with_faces"] <= 1 and record["frames"] == 30


def test_a_folder_without_a_contract_hides_faces_unless_its_delivery_toml_allows_them(tmp_path):
    write_video(tmp_path / "plain" / "a.mp4", VideoSpec(frames=10))
    write_video(tmp_path / "allows" / "a.mp4", VideoSpec(frames=10))
    (tmp_path / "allows" / "delivery.toml").write_text("[consent]\nfaces_allowed = true\n")
    (plain,) = refs_from_folder(tmp_path / "plain", "p").refs
    (allows,) = refs_from_folder(tmp_path / "allows", "p").refs
    assert not faces_allowed(plain.meta_json) and json.loads(plain.meta_json)["audio_allowed"] is False
    assert faces_allowed(allows.meta_json)
    for meta in ("{}", "", "not json", '{"faces_allowed": "true"}', '{"faces_allowed": 1}', "[true]"):
        assert not faces_allowed(meta)  # only an explicit JSON true shows faces


def test_a_clip_whose_deidentification_cannot_run_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", VideoSpec(frames=20))
    rec = RecordingInfo(sha256_file(path), "p", "d", str(path), meta_json=FORBIDDEN)
    task = next(t for t in plan_recording(str(path), rec, (), ClipConfig(clip_s=2.0)))

    def broken(provider="auto", precision="int8"):
        raise OSError("model file unreadable")

    monkeypatch.setattr(face_detector, "detector", broken)
    with pytest.raises(DecodeError) as refused:
        cut_window(task, tmp_path / "out")
    assert refused.value.reason == "deid_failed" and "could not run" in refused.value.detail
    assert not list((tmp_path / "out").glob("*.mp4"))
    monkeypatch.setattr(face_detector, "model_path", lambda: (_ for _ in ()).throw(
        DecodeError("deface", "deid_failed", "weights not installed")))
    monkeypatch.setattr(face_detector, "_detectors", {})
    monkeypatch.setattr(face_detector, "detector",
                        lambda provider="auto", precision="int8": face_detector.FaceDetector(provider, precision))
    with pytest.raises(DecodeError, match="weights not installed"):
        cut_window(task, tmp_path / "out")
    allowed = next(t for t in plan_recording(str(path), RecordingInfo(rec.recording_id, "p", "d", str(path),
                                                                        meta_json=ALLOWED), (), ClipConfig(clip_s=2.0)))
    assert cut_window(allowed, tmp_path / "out")[0]  # faces allowed: the detector is never asked for


SECRETS = (("location", "+48.8584+002.2945/"), ("com.apple.quicktime.location.ISO6709", "+48.8584+002.2945+035.000/"),
           ("make", "SecretCam"), ("model", "SpyGlass 9"), ("serial_number", "SN-8F3A-0042"),
           ("creation_time", "2026-11-01T09:00:00.000000Z"), ("comment", "recorded by jane.doe@example.org"),
           ("title", "Jane Doe at home"))


@pytest.mark.parametrize("meta_json", [ALLOWED, json.dumps({"faces_allowed": True, "audio_allowed": True})])
def test_audio_and_container_metadata_never_reach_a_clip(tmp_path, meta_json):
    # QuickTime, as phones write it: make, model and GPS (the ©xyz atom) in user data, times in the headers
    path = write_video(tmp_path / "phone.mov", VideoSpec(frames=20, audio=True, metadata=SECRETS))
    with av.open(str(path)) as source:  # the source does carry them
        assert source.streams.audio and source.metadata["make"] == "SecretCam"
        assert source.metadata["location"] == "+48.8584+002.2945/" and source.metadata["model"] == "SpyGlass 9"
        assert source.metadata["creation_time"].startswith("2026-11-01")
    row, _, clip = cut(path, meta_json, tmp_path / "out", ClipConfig(clip_s=2.0))
    with av.open(clip) as container:
        assert not container.streams.audio and len(container.streams) == 1
        tags = {**container.metadata, **container.streams.video[0].metadata}
    assert set(tags) <= {"major_brand", "minor_version", "compatible_brands", "encoder", "handler_name",
                         "vendor_id", "language"}, tags
    data = Path(clip).read_bytes()
    for _, value in SECRETS:
        assert value.encode() not in data
    assert b"2026-11-01" not in data and b"48.8584" not in data
    assert json.loads(row["deid"])["audio"] == "dropped"


def test_a_face_missed_by_one_detection_between_two_others_is_still_covered():
    config = DeidConfig(bridge=2)
    face = np.array([[100, 50, 120, 74, 0.9]], np.float32)
    none = np.zeros((0, 5), np.float32)
    at = [0, 2, 4, 6]
    moved = face + [[8, 0, 8, 0, 0]]
    regions, faces = face_regions([face, none, moved, none], at, 7, 256, 2, config)
    assert faces == 1 and all(regions[t] for t in range(7))
    # between the two detections the box moves along: frame 2 is half-way
    np.testing.assert_allclose(regions[2][0], [104, 50, 124, 74])


def test_the_camera_path_follows_the_scene_between_detections():
    # a textured room filmed by a camera drifting by known sub-pixel steps: the path is found to within a pixel
    rng = np.random.default_rng(3)
    room = np.kron(rng.uniform(40, 220, (70, 120)), np.ones((8, 8)))
    steps = [(0.0, 0.0), (6.5, -2.0), (14.0, -3.5), (25.5, 1.0), (40.0, 4.5)]  # where the view looks, x, y
    frames = []
    for x, y in steps:  # bilinear sampling of the room at the view's sub-pixel position
        x0, y0, fx, fy = int(np.floor(x)) + 50, int(np.floor(y)) + 60, x % 1, y % 1
        view = room[y0:y0 + 257, x0:x0 + 457]
        frames.append(((1 - fy) * ((1 - fx) * view[:-1, :-1] + fx * view[:-1, 1:])
                       + fy * ((1 - fx) * view[1:, :-1] + fx * view[1:, 1:])).astype(np.uint8))
    path = camera_path(frames)
    np.testing.assert_allclose(path, -np.array(steps), atol=1.0)  # the scene moves against the view
    still = camera_path([np.full((256, 456), 128, np.uint8)] * 3)  # nothing to follow: no motion invented
    np.testing.assert_array_equal(still, 0)


def test_boxes_ride_the_camera_and_a_face_cut_by_the_edge_is_hidden_where_either_detection_says():
    config = DeidConfig(bridge=2)
    path = np.array([[-10.0 * t, 2.0 * t] for t in range(5)])  # the scene moves 10 px left, 2 down per frame
    face = np.array([[200, 50, 220, 74, 0.9]], np.float32)
    regions, faces = face_regions([face, face + [[-40, 8, -40, 8, 0]]], [0, 4], 5, 256, 4, config, path)
    assert faces == 1
    np.testing.assert_allclose(regions[2][0], [180, 54, 200, 78])  # carried by the camera, not drawn straight
    # entering at the right edge: the first detection sees a sliver of the face, the next the whole of it; the
    # frames between hide both, each carried by the camera
    sliver = np.array([[440, 60, 452, 80, 0.3]], np.float32)
    whole = np.array([[380, 68, 412, 108, 0.9]], np.float32)
    regions, faces = face_regions([sliver, whole], [0, 4], 5, 256, 4, config, path)
    assert faces == 1
    x0, y0, x1, y1 = regions[1][0]
    assert x0 <= 430 and y0 <= 62 and x1 >= 442 and y1 >= 102  # the sliver moved 10 left, the whole face 30 right


def test_a_face_that_leaves_the_view_is_not_matched_to_another_face_across_a_missed_detection():
    # the camera pans 12 px a frame; a face at the left edge leaves; another face further right is found later
    config = DeidConfig(bridge=2)
    path = np.array([[-12.0 * t, 0.0] for t in range(9)])
    leaving = np.array([[10, 40, 40, 80, 0.9]], np.float32)
    other = np.array([[100, 60, 140, 110, 0.9]], np.float32)
    none = np.zeros((0, 5), np.float32)
    regions, faces = face_regions([leaving, none, other], [0, 4, 8], 9, 256, 4, config, path)
    assert faces == 2  # two faces, not one that jumped 190 px against the camera
    assert all(box[0] < 10 for box in regions[2] if box[3] < 100)  # the leaving face keeps going left


def test_the_detector_sees_a_multiple_of_32_near_the_asked_scale():
    assert detect_size(456, 256, 1.5) == (672, 384)  # 684 would be padded to 704: 5% more for nothing
    assert detect_size(256, 456, 1.5) == (384, 672) and detect_size(20, 20, 1.0) == (32, 32)


def test_mosaic_leaves_no_feature_of_the_face():
    photo = luma(face_photo())
    x0, y0, x1, y1 = PHOTO_FACE
    face = photo[y0:y1, x0:x1].astype(np.uint8)
    hidden = mosaic(face, 2).astype(np.float32)
    assert detail(hidden) < 0.1 * detail(face.astype(np.float32))
    assert abs(hidden.mean() - face.mean()) < 3  # the same colour: the picture still reads as a scene

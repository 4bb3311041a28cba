"""Clip cutting: frame-exact windows, stable ids, rotation, variable rate, codecs, hard cuts and mid-stream errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ingest.clips import cut_window
from ingest.plan import ClipConfig, RecordingInfo, WindowTask, clip_id, plan_windows, sha256_file, target_size
from ingest.errors import DecodeError
from ingest.probe import probe
from ingest.scenes import detect_cuts, luma_histogram
from ingest.synth import VideoSpec, painter, read_counter, vfr_pts, write_video


def cut_all(path: Path, config: ClipConfig, out: Path):
    """Every window of a recording, the way the pipeline runs them: (outputs, refusals, decode errors)."""
    result = probe(path)
    rec = RecordingInfo(sha256_file(path), "p", "d", str(path), result.codec, result.width, result.height,
                        result.rotation_deg)
    outputs, refusals, errors = [], [], []
    out.mkdir(parents=True, exist_ok=True)
    for window in plan_windows(result, config):
        try:
            done, refused = cut_window(WindowTask(rec, str(path), window, config), out)
        except DecodeError as e:
            errors.append((window, e))
            continue
        outputs += done
        refusals += refused
    return outputs, refusals, errors


def decoded(output) -> list[np.ndarray]:
    with av.open(output.files[output.row["clip_key"]]) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("gop,bframes", [(10, 0), (15, 0), (15, 2), (4, 3)])
def test_windows_are_frame_exact_even_between_keyframes(tmp_path, gop, bframes):
    # 1.5 s clips at 10 fps start at frames 0, 15, 30...: with gop 10 most starts are not keyframes; with gop 15 every
    # start is one (the seek must land on it, not a GOP earlier); B-frames make decode order differ from display order
    path = write_video(tmp_path / "counter.mp4", VideoSpec(frames=64, scene="counter", gop=gop, bframes=bframes))
    outputs, refusals, errors = cut_all(path, ClipConfig(clip_s=1.5, short_side=64), tmp_path / "out")
    assert not refusals and not errors
    assert [o.row["t0"] for o in outputs] == [0.0, 1.5, 3.0, 4.5]  # 64 frames: the partial 5th window is no clip
    for k, output in enumerate(outputs):
        assert [read_counter(f) for f in decoded(output)] == list(range(15 * k, 15 * k + 15))
        assert output.row["frames"] == 15 and output.row["t1"] == pytest.approx(output.row["t0"] + 1.5)


def test_stride_overlaps_windows(good_video):
    windows = plan_windows(probe(good_video), ClipConfig(clip_s=2.0, stride_s=1.0))
    assert [(w.start_frame, w.frames) for w in windows] == [(0, 20), (10, 20), (20, 20)]


def test_a_recording_shorter_than_a_clip_is_a_clip_of_its_own_length_unless_below_min_clip_s(good_video):
    windows = plan_windows(probe(good_video), ClipConfig(clip_s=5.0))  # 4 s
    assert [(w.start_frame, w.frames, w.t1) for w in windows] == [(0, 40, 4.0)]
    with pytest.raises(DecodeError) as caught:
        plan_windows(probe(good_video), ClipConfig(clip_s=5.0, min_clip_s=4.5))
    assert caught.value.reason == "too_short" and str(good_video) in str(caught.value)
    assert "min_clip_s=4.5" in caught.value.detail


def test_ids_are_content_derived_and_encoding_is_deterministic(tmp_path, good_video):
    first, _, _ = cut_all(good_video, ClipConfig(clip_s=2.0), tmp_path / "a")
    again, _, _ = cut_all(good_video, ClipConfig(clip_s=2.0), tmp_path / "b")
    sha = sha256_file(good_video)
    fp = ClipConfig(clip_s=2.0).fingerprint
    assert [o.row["clip_id"] for o in first] == [clip_id(sha, 0.0, fp), clip_id(sha, 2.0, fp)] == [
        f"{sha}-000000000-{fp}", f"{sha}-000002000-{fp}"]
    assert ClipConfig(clip_s=2.0, short_side=128).fingerprint != fp  # other bytes, other ids
    assert ClipConfig(clip_s=2.0, stride_s=1.0).fingerprint == fp  # the stride moves clips, it does not reshape them
    assert [o.row["clip_id"] for o in again] == [o.row["clip_id"] for o in first]
    for a, b in zip(first, again):
        assert Path(a.files[a.row["clip_key"]]).read_bytes() == Path(b.files[b.row["clip_key"]]).read_bytes()


def test_reencode_scales_the_short_side_and_applies_rotation(tmp_path):
    frames = []
    for i in range(20):  # a bright top-left corner on a 64x32 coded picture
        image = np.full((32, 64, 3), 60, np.uint8)
        image[:8, :8] = 250
        frames.append(image)
    path = write_video(tmp_path / "phone.mp4", VideoSpec(width=64, height=32, frames=20, rotation=90), frames)
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=2.0, short_side=16), tmp_path / "out")
    assert not errors and (outputs[0].row["width"], outputs[0].row["height"]) == (16, 32)
    assert (outputs[0].row["source_width"], outputs[0].row["source_height"]) == (32, 64)
    image = decoded(outputs[0])[0]
    assert image.shape == (32, 16, 3)
    assert image[-3:, :3].mean() > 200 and image[:3, :3].mean() < 120  # counter-clockwise: top-left -> bottom-left
    assert target_size(1920, 1080, 0, ClipConfig(short_side=256)) == (456, 256)
    assert target_size(64, 48, 0, ClipConfig(short_side=256)) == (64, 48)  # no upscaling unless asked


def test_variable_frame_rate_becomes_a_fixed_rate_of_nearest_frames(tmp_path):
    spec = VideoSpec(frames=60, scene="counter", vfr=True)
    path = write_video(tmp_path / "vfr.mp4", spec)
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=2.0, fps=10, short_side=64), tmp_path / "out")
    assert not errors and [o.row["frames"] for o in outputs] == [20, 20, 20, 10]  # 7 s of video: the rest is 1 s
    source_times = np.array(vfr_pts(spec.frames)) / (2 * spec.fps)
    for output in outputs:
        times = output.row["t0"] + np.arange(output.row["frames"]) / 10
        shown = np.array([read_counter(f) for f in decoded(output)])
        nearest = np.abs(source_times[None, :] - times[:, None]).min(axis=1)
        assert np.allclose(np.abs(source_times[shown] - times), nearest, atol=1e-6)  # a nearest frame (ties: either)
        assert output.row["fps"] == 10.0


@pytest.mark.parametrize("spec", [VideoSpec(frames=20, codec="libx265", scene="counter"),
                                  VideoSpec(frames=20, pix_fmt="yuv420p10le", scene="counter")])
def test_hevc_and_10_bit_sources_become_8_bit_h264_clips(tmp_path, spec):
    path = write_video(tmp_path / "v.mp4", spec)
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=2.0), tmp_path / "out")
    assert not errors and [read_counter(f) for f in decoded(outputs[0])] == list(range(20))
    with av.open(outputs[0].files[outputs[0].row["clip_key"]]) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")


def test_errors_half_way_keep_the_clips_before_and_refuse_the_rest(tmp_path):
    path = write_video(tmp_path / "g.mp4", VideoSpec(frames=80, scene="pan"))
    data = bytearray(path.read_bytes())
    mdat = data.find(b"mdat")
    size = int.from_bytes(data[mdat - 4:mdat], "big")
    start = mdat + 4 + size // 2
    data[start:start + size // 3] = np.random.default_rng(1).integers(0, 256, size // 3, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=1.0), tmp_path / "out")
    assert [o.row["t0"] for o in outputs][:3] == [0.0, 1.0, 2.0]  # the first half decodes
    # the damaged half decodes with concealment or not at all: each window it reaches is refused for its damage
    assert errors and all(e.reason == "corrupt_frames" and str(path) in str(e) for _, e in errors)
    assert min(w.t0 for w, _ in errors) >= 3.0


def test_head_motion_is_not_a_cut_and_a_hard_cut_splits_the_window(tmp_path):
    for seed in range(3):
        walking = [luma_histogram(painter(VideoSpec(scene="head_motion", seed=seed))(i)) for i in range(80)]
        assert detect_cuts(walking) == []
    world = painter(VideoSpec(width=256, height=256, scene="pan"))(0)  # a 256 px world seen through 64 px
    whip = [luma_histogram(world[int(64 + 60 * np.sin(i / 2)):][:64, int(96 + 90 * np.sin(i / 3)):][:, :64])
            for i in range(60)]  # head turns of up to 30 px a frame
    assert detect_cuts(whip) == []
    path = write_video(tmp_path / "cut.mp4", VideoSpec(frames=40, scene="cut", cut_at=25))
    outputs, refusals, errors = cut_all(path, ClipConfig(clip_s=4.0, scene_split=True, min_clip_s=1.0),
                                        tmp_path / "out")
    assert not errors and not refusals
    assert [(o.row["t0"], o.row["frames"]) for o in outputs] == [(0.0, 25), (2.5, 15)]
    short = cut_all(path, ClipConfig(clip_s=4.0, scene_split=True, min_clip_s=2.0), tmp_path / "out2")
    assert [o.row["frames"] for o in short[0]] == [25] and [r.reason for r in short[1]] == ["scene_fragment"]


def test_clip_keyframes_are_the_clips_own_not_the_sources(tmp_path):
    # a keyframe every 3 source frames: the clip still gets one per second of its own (decoded frames carry their
    # picture type, which x264 would otherwise follow)
    path = write_video(tmp_path / "gop3.mp4", VideoSpec(frames=40, scene="static", gop=3))  # no scene cut to add one
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=2.0, short_side=32), tmp_path / "out")
    assert not errors and len(outputs) == 2
    for output in outputs:
        with av.open(output.files[output.row["clip_key"]]) as container:
            packets = [packet for packet in container.demux(video=0) if packet.size]
        assert [i for i, packet in enumerate(packets) if packet.is_keyframe] == [0, 10]


def test_frame_statistics_tell_dark_from_lit(tmp_path):
    dark = write_video(tmp_path / "dark.mp4", VideoSpec(frames=20, scene="dark"))
    lit = write_video(tmp_path / "lit.mp4", VideoSpec(frames=20, scene="moving_square"))
    dark_row = cut_all(dark, ClipConfig(clip_s=2.0), tmp_path / "o1")[0][0].row
    lit_row = cut_all(lit, ClipConfig(clip_s=2.0), tmp_path / "o2")[0][0].row
    assert dark_row["luma_mean"] < 20 < lit_row["luma_mean"]
    assert dark_row["dark_fraction"] > 0.5 > lit_row["dark_fraction"]
    assert lit_row["frame_diff_mean"] > 0 and lit_row["sharpness"] > 0


def _write_with_pts(path: Path, pts: list[int], fmt: str) -> Path:
    """A 10 fps stream whose frames carry the given timestamps (ticks of 1/10 s)."""
    paint = painter(VideoSpec(scene="counter"))
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        for i, stamp in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(paint(i), format="rgb24")
            frame.pts = stamp
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_gap_in_the_timeline_refuses_only_the_windows_inside_it(tmp_path):
    path = _write_with_pts(tmp_path / "gap.mp4", list(range(20)) + list(range(50, 80)), "mp4")
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=1.0, fps=10), tmp_path / "out")
    assert [o.row["t0"] for o in outputs] == [0.0, 1.0, 5.0, 6.0, 7.0]
    assert [(w.t0, e.reason) for w, e in errors] == [(2.0, "decode_failed"), (3.0, "decode_failed"),
                                                     (4.0, "decode_failed")]
    assert "gap" in str(errors[0][1])


def test_frames_hours_apart_are_refused_before_any_window_is_planned(tmp_path):
    path = _write_with_pts(tmp_path / "hours.ts", [i * 36000 for i in range(20)], "mpegts")
    with pytest.raises(DecodeError) as caught:
        plan_windows(probe(path), ClipConfig(clip_s=4.0))
    assert caught.value.reason in ("corrupt", "too_short") and str(path) in str(caught.value)


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_rotating_packed_yuv_matches_rotating_the_picture(degrees):
    from ingest.frames import rotate

    image = painter(VideoSpec(width=64, height=32, scene="moving_square"))(3)
    yuv = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray()
    turned = rotate(yuv, degrees, "yuv420p")
    expected = av.VideoFrame.from_ndarray(rotate(image, degrees), format="rgb24").reformat(format="yuv420p")
    assert turned.shape == expected.to_ndarray().shape
    back = av.VideoFrame.from_ndarray(turned, format="yuv420p").to_ndarray(format="rgb24").astype(int)
    assert np.abs(back - expected.to_ndarray(format="rgb24").astype(int)).mean() < 3

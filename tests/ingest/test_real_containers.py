"""Files as they arrive: AVI with B-frames, Matroska remuxes, legacy codecs, short recordings and damaged slices."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from curation.media import decode_clip
from curation.quality import QualityConfig, measure, quality_reason
from ingest.plan import ClipConfig, clip_id, plan_windows, sha256_file
from ingest.errors import DecodeError
from ingest.probe import probe
from ingest.synth import VideoSpec, read_counter, write_video
from tests.ingest.test_clips import cut_all, decoded


def remux(source: Path, target: Path, fmt: str) -> Path:
    """The same packets in another container, nothing re-encoded."""
    with av.open(str(source)) as src, av.open(str(target), mode="w", format=fmt) as out:
        video = src.streams.video[0]
        stream = out.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is None:  # the demuxer's end-of-stream packet
                continue
            packet.stream = stream
            out.mux(packet)
    return target


def assert_frame_exact(outputs, fps: float) -> None:
    """Each clip shows source frames t0 * fps, t0 * fps + 1, ... (the counter scene paints each frame's index)."""
    for output in outputs:
        first = int(round(output.row["t0"] * fps))
        assert [read_counter(f) for f in decoded(output)] == list(range(first, first + output.row["frames"]))


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_an_avi_whose_first_frame_decodes_after_zero_keeps_its_first_window(tmp_path, codec):
    # B-frames in AVI: the first frame comes out at pts 1 (0.042 s); x264's frames also come out carrying their
    # neighbours' times (1, 3, 4, 2, ...) because AVI stores none
    spec = VideoSpec(fps=24, frames=96, codec=codec, bframes=2, gop=12, scene="counter")
    path = write_video(tmp_path / "bframes.avi", spec, container_format="avi")
    result = probe(path)
    assert (result.container_format, result.start_pts) == ("avi", 1)
    assert result.duration_s == pytest.approx(4.0)
    outputs, refusals, errors = cut_all(path, ClipConfig(clip_s=1.5, short_side=64), tmp_path / "out")
    assert not errors and not refusals
    assert [(o.row["t0"], o.row["frames"]) for o in outputs] == [(0.0, 36), (1.5, 36), (3.0, 24)]
    assert_frame_exact(outputs, 24)


@pytest.mark.parametrize("fps", [24, 60])
def test_a_4_s_recording_is_one_4_s_clip_in_mp4_matroska_and_avi(tmp_path, fps):
    spec = VideoSpec(fps=fps, frames=4 * fps, bframes=2, gop=fps, scene="counter")
    mp4 = write_video(tmp_path / "v.mp4", spec)
    mkv = remux(mp4, tmp_path / "v.mkv", "matroska")  # millisecond timestamps: 96 frames at 24 fps span 3.999 s
    avi = write_video(tmp_path / "v.avi", spec, container_format="avi")
    for path in (mp4, mkv, avi):
        result = probe(path)
        assert abs(result.duration_s - 4.0) < 0.5 / fps, path.name
        outputs, refusals, errors = cut_all(path, ClipConfig(short_side=64), tmp_path / f"out-{path.suffix}")
        assert not errors and not refusals, path.name
        assert [(o.row["t0"], o.row["frames"]) for o in outputs] == [(0.0, 4 * fps)], path.name
        assert_frame_exact(outputs, fps)


def test_a_legacy_codec_in_avi_becomes_h264_clips(tmp_path):
    spec = VideoSpec(frames=40, codec="cinepak", pix_fmt="rgb24", scene="counter")
    path = write_video(tmp_path / "cinepak.avi", spec, container_format="avi")
    assert probe(path).codec == "cinepak"
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=2.0, short_side=64), tmp_path / "out")
    assert not errors and [o.row["source_codec"] for o in outputs] == ["cinepak", "cinepak"]
    assert_frame_exact(outputs, 10)
    with av.open(outputs[0].files[outputs[0].row["clip_key"]]) as container:
        assert container.streams.video[0].codec_context.name == "h264"


@pytest.mark.parametrize("seconds, clips", [
    (1.5, [(0.0, 15)]),  # shorter than one 4 s window: one clip of its own length
    (10.0, [(0.0, 40), (4.0, 40), (8.0, 20)]),  # the 2 s after the last full window: a clip of its own
    (8.5, [(0.0, 40), (4.0, 40)]),  # 0.5 s left over, below min_clip_s: no clip
])
def test_short_recordings_and_the_rest_after_the_last_window_become_clips(tmp_path, seconds, clips):
    path = write_video(tmp_path / "v.mp4", VideoSpec(frames=int(seconds * 10), scene="counter"))
    config = ClipConfig(short_side=64)
    outputs, refusals, errors = cut_all(path, config, tmp_path / "a")
    assert not errors and not refusals
    assert [(o.row["t0"], o.row["frames"]) for o in outputs] == clips
    assert [o.row["t1"] for o in outputs] == pytest.approx([t0 + n / 10 for t0, n in clips])
    assert_frame_exact(outputs, 10)
    sha = sha256_file(path)
    assert [o.row["clip_id"] for o in outputs] == [clip_id(sha, t0, config.fingerprint) for t0, _ in clips]
    again, _, _ = cut_all(path, config, tmp_path / "b")  # a re-run: the same ids and the same bytes
    assert [o.row["clip_id"] for o in again] == [o.row["clip_id"] for o in outputs]
    for a, b in zip(outputs, again):
        assert Path(a.files[a.row["clip_key"]]).read_bytes() == Path(b.files[b.row["clip_key"]]).read_bytes()


def test_a_recording_below_min_clip_s_is_too_short(tmp_path):
    path = write_video(tmp_path / "half.mp4", VideoSpec(frames=5))  # 0.5 s
    with pytest.raises(DecodeError) as caught:
        plan_windows(probe(path), ClipConfig())
    assert caught.value.reason == "too_short" and str(path) in str(caught.value)
    assert "0.50 s" in caught.value.detail and "min_clip_s=1" in caught.value.detail


@pytest.mark.parametrize("fps", [10, 24, 30])
def test_curation_takes_the_shortest_clip_ingest_makes(tmp_path, fps):
    # a 5 s recording at 4 s windows leaves exactly min_clip_s = 1 s: curation's bar is 1 s and 8 frames
    path = write_video(tmp_path / "v.mp4", VideoSpec(fps=fps, frames=5 * fps, width=128, height=128, scene="pan"))
    outputs, _, errors = cut_all(path, ClipConfig(), tmp_path / "out")
    assert not errors and [o.row["frames"] for o in outputs] == [4 * fps, fps]
    tail = outputs[-1]
    clip = decode_clip(Path(tail.files[tail.row["clip_key"]]).read_bytes(), tail.row["clip_key"])
    assert quality_reason(measure(clip), QualityConfig()) != "too_short"


def damage_slices(path: Path, frames: list[int], fill: bytes | None = None) -> Path:
    """Overwrite 8 bytes (random, or `fill`) a third into the slice data of the given frames (decode order) of an
    H.264 mp4, leaving every header, box and NAL length intact: the frames still decode, with errors the decoder
    conceals."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for index in frames:
        offset, end = packets[index]
        end += offset
        while offset < end:  # AVCC: a 4-byte length before each NAL unit
            size = int.from_bytes(data[offset:offset + 4], "big")
            if data[offset + 4] & 0x1F in (1, 5):  # a coded slice
                at = offset + 4 + size // 3
                data[at:at + 8] = fill or rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
            offset += 4 + size
    damaged = path.with_name(f"damaged-{path.name}")
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize("height, scene, threads, flagged", [
    (128, "noise", 1, 0),  # two slices a frame: PyAV's default decode (slice threads) flags no frame corrupt
    (128, "noise", 0, 0),  # the same, cut with FFmpeg's decoder threads
    (96, "pan", 1, 1),  # one slice: the damaged frame is flagged, never the frames predicted from it
])
def test_a_window_with_concealed_damage_is_refused_and_the_clean_one_kept(tmp_path, height, scene, threads, flagged):
    # CABAC (veryfast), as phones write it: damage in the slice data is detected and concealed, no exception
    spec = VideoSpec(width=128, height=height, frames=40, scene=scene, preset="veryfast", gop=30)
    path = damage_slices(write_video(tmp_path / "v.mp4", spec), frames=[25])
    assert probe(path).duration_s == pytest.approx(4.0)  # the container is intact
    with av.open(str(path)) as container:
        corrupt = [f.is_corrupt for f in container.decode(video=0)]
    assert len(corrupt) == 40 and sum(corrupt) == flagged  # every frame decodes, without an exception
    outputs, _, errors = cut_all(path, ClipConfig(clip_s=2.0, short_side=64, threads=threads), tmp_path / "out")
    assert [o.row["t0"] for o in outputs] == [0.0]  # the window before the damage (same GOP) is kept
    assert [(w.t0, e.reason) for w, e in errors] == [(2.0, "corrupt_frames")]
    assert str(path) in str(errors[0][1]) and "2.000-4.000 s" in errors[0][1].detail

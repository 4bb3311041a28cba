"""Probe: what a good file is and why a bad one is refused."""

from __future__ import annotations

import os

import pytest

from ingest.errors import DecodeError
from ingest.probe import probe
from ingest.synth import VideoSpec, write_video


def test_probe_reads_what_the_file_is(good_video):
    result = probe(good_video)
    assert (result.container_format, result.codec, result.width, result.height) == ("mov", "h264", 64, 64)
    assert result.fps_avg == pytest.approx(10.0) and result.fps_real == pytest.approx(10.0)
    assert result.duration_s == pytest.approx(4.0)
    assert not result.variable_frame_rate and not result.has_audio
    assert result.rotation_deg == 0 and result.bit_depth == 8 and result.pix_fmt == "yuv420p"
    assert result.keyframe_interval_s == pytest.approx(1.0)
    assert result.frames is None and result.packets == 40
    assert probe(good_video, decode_all=True).frames == 40


@pytest.mark.parametrize("name, reason", [
    ("empty", "empty_file"), ("truncated_5", "truncated"), ("truncated_50", "truncated"), ("garbage", "not_video"),
    ("png_as_mp4", "not_video"), ("audio_as_mp4", "no_video_stream"), ("corrupt_moov", "corrupt"),
    ("hls_playlist", "not_video"),
])
def test_bad_inputs_are_refused_with_their_reason(bad_inputs, name, reason):
    with pytest.raises(DecodeError) as caught:
        probe(bad_inputs[name])
    assert caught.value.reason == reason
    assert str(bad_inputs[name]) in str(caught.value) and caught.value.path == str(bad_inputs[name])


def test_huge_resolution_is_refused_before_decoding(good_video):
    with pytest.raises(DecodeError) as caught:
        probe(good_video, max_pixels=64 * 63)
    assert caught.value.reason == "resolution_too_large" and "64x64" in caught.value.detail


def test_container_outside_the_allow_list_is_refused(good_video):
    with pytest.raises(DecodeError) as caught:
        probe(good_video, allowed_formats={"matroska"})
    assert caught.value.reason == "not_video" and "mov" in caught.value.detail


def test_symbolic_link_is_not_followed(good_video, tmp_path):
    link = tmp_path / "link.mp4"
    os.symlink(good_video, link)
    with pytest.raises(DecodeError) as caught:
        probe(link)
    assert caught.value.reason == "not_video" and "link" in caught.value.detail


@pytest.mark.parametrize("spec, check", [
    (VideoSpec(frames=30, vfr=True), lambda r: r.variable_frame_rate and r.duration_s == pytest.approx(3.5)),
    (VideoSpec(frames=20, rotation=90), lambda r: r.rotation_deg == 90 and r.display_size == (64, 64)),
    (VideoSpec(width=64, height=32, frames=20, rotation=270), lambda r: r.display_size == (32, 64)),
    (VideoSpec(frames=20, codec="libx265"), lambda r: r.codec == "hevc"),
    (VideoSpec(frames=20, pix_fmt="yuv420p10le"), lambda r: r.bit_depth == 10),
    (VideoSpec(frames=20, audio=True), lambda r: r.has_audio),
])
def test_probe_reports_rate_rotation_codec_depth_audio(tmp_path, spec, check):
    assert check(probe(write_video(tmp_path / "v.mp4", spec)))


def test_mkv_avi_and_mpegts_are_accepted(tmp_path):
    for name, fmt in (("v.mkv", "matroska"), ("v.avi", "avi"), ("v.ts", "mpegts")):
        result = probe(write_video(tmp_path / name, VideoSpec(frames=10), container_format=fmt))
        assert result.container_format == fmt and result.width == 64


def test_decode_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(DecodeError("a.mp4", "corrupt", "bad index")))
    assert (error.path, error.reason, str(error)) == ("a.mp4", "corrupt", "a.mp4: bad index (corrupt)")


def test_importing_ingest_pulls_in_neither_beam_nor_torch():
    import subprocess
    import sys

    code = ("import sys, ingest.probe, ingest.errors, ingest.synth; "
            "print(any(m.split('.')[0] in ('apache_beam', 'torch') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("fmt, name", [("matroska", "big.mkv"), ("mpegts", "big.ts")])
def test_the_pixel_bound_also_holds_while_ffmpeg_reads_the_headers(tmp_path, fmt, name):
    # in these containers FFmpeg decodes frames to learn the stream; the bound must refuse before that work
    path = write_video(tmp_path / name, VideoSpec(width=1280, height=1024, frames=3, scene="static"),
                       container_format=fmt)
    with pytest.raises(DecodeError) as caught:
        probe(path, max_pixels=1_000_000)
    assert caught.value.reason == "resolution_too_large" and "1280x1024" in caught.value.detail

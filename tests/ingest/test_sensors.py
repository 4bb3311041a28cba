"""Sensor alignment: an analytic IMU signal comes back at the frame times; gaps, bad files and units are handled."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ingest.clips import ClipConfig, RecordingInfo, WindowTask, cut_window, plan_recording, sha256_file
from ingest.sensors import SensorSpec, read_stream, resample, sidecar_spec, window_slices
from ingest.synth import (IMU_COLUMNS, ImuSpec, VideoSpec, imu_signal, imu_table, write_imu_csv, write_imu_npy,
                          write_video)

UNITS = {"t": "s", "ax": "m/s^2", "ay": "m/s^2", "az": "m/s^2", "gx": "rad/s", "gy": "rad/s", "gz": "rad/s"}


def imu_spec(path, fmt="csv", **kw) -> SensorSpec:
    return SensorSpec(stream="imu", path=str(path), format=fmt, columns=IMU_COLUMNS, units=kw.pop("units", UNITS),
                      rate_hz=200.0, **kw)


def ingest(tmp_path, video, sensors, config=ClipConfig(clip_s=2.0)):
    """(rows by clip start, refusals, {clip start: {stream: array}}) for one recording."""
    rec = RecordingInfo(sha256_file(video), "p", "d", str(video))
    rows, refusals, arrays = {}, [], {}
    for item in plan_recording(str(video), rec, sensors, config):
        if not isinstance(item, WindowTask):
            refusals.append(item)
            continue
        outputs, refused = cut_window(item, tmp_path / "out")
        refusals += refused
        for output in outputs:
            rows[output.row["t0"]] = output.row
            arrays[output.row["t0"]] = {stream: np.load(output.files[key])
                                        for stream, key in json.loads(output.row["sensor_keys"]).items()}
    return rows, refusals, arrays


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "walk.mp4", VideoSpec(frames=40, scene="head_motion"))


@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_imu_comes_back_at_the_frame_times(tmp_path, video, fmt):
    spec = ImuSpec(seconds=4.5)
    table = imu_table(spec)
    path = (write_imu_csv(tmp_path / "imu.csv", table) if fmt == "csv" else write_imu_npy(tmp_path / "imu.npy", table))
    rows, refusals, arrays = ingest(tmp_path, video, [imu_spec(path, fmt)])
    assert not refusals and sorted(rows) == [0.0, 2.0]
    for t0, row in rows.items():
        assert row["sensor_status"] == "ok"
        assert json.loads(row["sensor_channels"]) == {"imu": ["ax", "ay", "az", "gx", "gy", "gz"]}
        values = arrays[t0]["imu"]
        assert values.dtype == np.float32 and values.shape == (20, 6)
        np.testing.assert_allclose(values, imu_signal(t0 + np.arange(20) / 10, spec), atol=2e-3)
        expected_rms = np.sqrt(np.mean(np.sum(values[:, 3:] ** 2, axis=1)))
        assert row["imu_gyro_rms"] == pytest.approx(expected_rms, rel=1e-5)
        assert row["imu_accel_std"] is not None


def test_clock_offset_and_units_are_applied(tmp_path, video):
    spec = ImuSpec(seconds=5.0)
    table = imu_table(spec)
    table[:, 1:4] /= 9.80665  # accel delivered in g
    table[:, 4:7] *= 180 / math.pi  # gyro in deg/s
    table[:, 0] *= 1000  # timestamps in ms
    units = {"t": "ms", "ax": "g", "ay": "g", "az": "g", "gx": "deg/s", "gy": "deg/s", "gz": "deg/s"}
    # the sensor clock started 0.25 s before the video: sensor time s is video time s - 0.25
    path = write_imu_csv(tmp_path / "imu.csv", table)
    rows, refusals, arrays = ingest(tmp_path, video, [imu_spec(path, units=units, clock_offset_s=-0.25)])
    assert not refusals
    for t0 in rows:
        frame_times = t0 + np.arange(20) / 10
        np.testing.assert_allclose(arrays[t0]["imu"], imu_signal(frame_times + 0.25, spec), atol=2e-3)


def test_a_nan_run_marks_only_its_clip_as_a_sensor_gap(tmp_path, video):
    table = imu_table(ImuSpec(seconds=4.5))
    table[(table[:, 0] > 2.5) & (table[:, 0] < 2.8), 4] = np.nan  # 0.3 s of a dead gyro axis
    rows, refusals, arrays = ingest(tmp_path, video, [imu_spec(write_imu_csv(tmp_path / "imu.csv", table))])
    assert rows[0.0]["sensor_status"] == "ok" and "imu" in arrays[0.0]
    assert rows[2.0]["sensor_status"] == "sensor_gap" and arrays[2.0] == {}  # nothing invented
    assert rows[2.0]["status"] == "ingested" and not refusals  # the video itself is fine


def test_sensor_data_ending_early_is_a_gap_not_an_extrapolation(tmp_path, video):
    rows, _, _ = ingest(tmp_path, video, [imu_spec(write_imu_csv(tmp_path / "imu.csv", imu_table(ImuSpec(seconds=3))))])
    assert (rows[0.0]["sensor_status"], rows[2.0]["sensor_status"]) == ("ok", "sensor_gap")


def test_non_monotonic_timestamps_refuse_the_stream_with_its_reason(tmp_path, video):
    table = imu_table(ImuSpec(seconds=4.5))
    table[[300, 301]] = table[[301, 300]]
    rows, refusals, arrays = ingest(tmp_path, video, [imu_spec(write_imu_csv(tmp_path / "imu.csv", table))])
    assert [(r.stage, r.reason) for r in refusals] == [("sensors", "timestamps_not_monotonic")]
    assert "imu.csv" in refusals[0].detail and "data row 302" in refusals[0].detail
    assert {row["sensor_status"] for row in rows.values()} == {"sensor_invalid"} and len(rows) == 2


def test_wrong_columns_refuse_the_stream(tmp_path, video):
    table = imu_table(ImuSpec(seconds=4.5))[:, :6]
    path = write_imu_csv(tmp_path / "imu.csv", table, columns=IMU_COLUMNS[:6])
    rows, refusals, _ = ingest(tmp_path, video, [imu_spec(path)])
    assert [r.reason for r in refusals] == ["sensor_columns"] and "gz" in refusals[0].detail
    assert len(rows) == 2  # the clips are kept, without IMU


def test_no_declared_stream_is_status_none(tmp_path, video):
    rows, _, _ = ingest(tmp_path, video, [])
    assert {row["sensor_status"] for row in rows.values()} == {"none"}


def test_slices_hold_only_their_window(tmp_path):
    path = write_imu_csv(tmp_path / "imu.csv", imu_table(ImuSpec(seconds=60)))
    spec = imu_spec(path)
    slices = list(window_slices(spec, [(k * 4.0, k * 4.0 + 4.0) for k in range(15)]))
    assert len(slices) == 15 and max(s.times.size for s in slices) <= 4.3 * 200
    assert sum(chunk[0].size for chunk in read_stream(spec)) == 12000
    values, status = resample(slices[3], np.array([12.0, 13.05]))
    assert status == "ok" and values.shape == (2, 6)


def test_a_zip_or_pickle_named_npy_is_unreadable_not_a_crash(tmp_path):
    for payload in (b"PK\x03\x04 not a zip", b"\x80\x04\x95 a pickle", b""):
        path = tmp_path / "imu.npy"
        path.write_bytes(payload)
        slices = list(window_slices(imu_spec(path, "npy"), [(0.0, 1.0), (1.0, 2.0)]))
        assert [s.problem for s in slices] == ["sensor_unreadable"] * 2 and "imu.npy" in slices[0].detail


def test_an_ngimu_export_beside_the_video_gives_clips_in_rad_per_s(tmp_path, video):
    """The reviewer's case: NGIMU's deg/s gyro was read as rad/s and real head motion refused as violent."""
    t = np.arange(500) / 100
    header = ("Time (s),Gyroscope X (deg/s),Gyroscope Y (deg/s),Gyroscope Z (deg/s),Accelerometer X (g),"
              "Accelerometer Y (g),Accelerometer Z (g)")
    body = [f"{s + 3.25:.6f},{30 * math.sin(math.pi * s):.5f},0,0,0,0,1" for s in t]
    csv = tmp_path / "walk.imu.csv"
    csv.write_text("\n".join([header, *body]) + "\n")
    rows, refusals, arrays = ingest(tmp_path, video, [sidecar_spec(csv, video)])
    assert not refusals and {row["sensor_status"] for row in rows.values()} == {"ok"}
    gyro = arrays[0.0]["imu"][:, 3]
    np.testing.assert_allclose(gyro, np.radians(30 * np.sin(np.pi * np.arange(20) / 10)), atol=1e-3)
    assert rows[0.0]["imu_gyro_rms"] < 0.5  # 30 deg/s peak, not 30 rad/s

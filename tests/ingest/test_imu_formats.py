"""IMU vendor exports: each written to its vendor's layout with a known motion comes back in seconds, rad/s, m/s^2."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from ingest import imu_formats
from ingest.sensors import SensorError, SensorSpec, read_stream, resample, resolve, sidecar_spec, window_slices

G = 9.80665
XIO_GYRO = ",".join(f"Gyroscope {a} (deg/s)" for a in "XYZ")
XIO_ACCEL = ",".join(f"Accelerometer {a} (g)" for a in "XYZ")


def motion(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gyro deg/s [n, 3], accel g [n, 3]): a head turning +-90 deg/s at 0.5 Hz, gravity on z."""
    w = 2 * np.pi * 0.5
    gyro = np.stack([90 * np.sin(w * t), 30 * np.cos(w * t), 10 * np.sin(2 * w * t)], axis=1)
    accel = np.stack([0.1 * np.sin(w * t), 0.05 * np.cos(w * t), np.ones_like(t)], axis=1)
    return gyro, accel


def rows(*columns: np.ndarray, fmt: str = "%.6f", sep: str = ",") -> list[str]:
    return [sep.join(fmt % v for v in row) for row in np.column_stack(columns)]


def write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def ngimu(path, seconds=3.0, rate=100.0):
    t = np.arange(int(seconds * rate)) / rate
    gyro, accel = motion(t)
    mag = np.tile([20.0, -8.0, -44.0], (t.size, 1))
    header = (f"Time (s),{XIO_GYRO},{XIO_ACCEL}," + ",".join(f"Magnetometer {a} (uT)" for a in "XYZ")
              + ",Barometer (hPa)")
    return write(path, [header] + rows(t + 12.5, gyro, accel, mag, np.full(t.size, 984.7)))


def ximu3(path, seconds=3.0, rate=100.0, start_us=19150794):
    t = np.arange(int(seconds * rate)) / rate
    gyro, accel = motion(t)
    stamps = (start_us + np.round(t * 1e6)).astype(np.int64).astype(str)
    return write(path, [f"Timestamp (us),{XIO_GYRO},{XIO_ACCEL}"]
                 + [f"{s},{r}" for s, r in zip(stamps, rows(gyro, accel))])


def ximu(folder, rate_code=9, seconds=2.0, registers=True, seed=0):
    """NAME_CalInertialAndMag.csv (+ NAME_Registers.csv): packet numbers step 1-3 (other packet types between)."""
    rate = 2.0 ** (rate_code - 1)
    t = np.arange(int(seconds * rate)) / rate
    gyro, accel = motion(t)
    packets = 115 + np.cumsum(np.random.default_rng(seed).integers(1, 4, t.size))
    header = f"Packet number,{XIO_GYRO},{XIO_ACCEL}," + ",".join(f"Magnetometer {a} (G)" for a in "XYZ")
    mag = np.tile([0.18, 0.0, -0.16], (t.size, 1))
    path = write(folder / "00033_CalInertialAndMag.csv",
                 [header] + [f"{p},{r}" for p, r in zip(packets, rows(gyro, accel, mag))])
    if registers:
        write(folder / "00033_Registers.csv", ["Packet number,Address,Value,Fixed-point value,Name",
                                              "1,0,10,NaN,FirmwareVersionMajorNum", "68,67,1,NaN,DateTimeDataRate",
                                              f"70,69,{rate_code},NaN,InertialAndMagneticDataRate",
                                              "71,70,8,NaN,QuaternionDataRate"])
    return path


def xsens(path, seconds=3.0, rate=100.0, counter0=2552, fine=False, rate_line=True, trailing_tab=True):
    t = np.arange(int(seconds * rate)) / rate
    gyro, accel = motion(t)
    counter = (counter0 + np.arange(t.size)) % 65536
    head = ["// Start Time: Unknown", f"// Update Rate: {rate:.1f}Hz" if rate_line else "// Scenario: 4.9",
            "// Filter Profile: human (46.1)", "// Firmware Version: 4.0.2"]
    names = ["PacketCounter"] + (["SampleTimeFine"] if fine else []) + [
        f"{k}_{a}" for k in ("Acc", "Gyr", "Mag") for a in "XYZ"]
    clocks = [f" {c}" + (f"\t{1_000_000 + round(s * 1e4)}" if fine else "") for c, s in zip(counter, t)]
    values = rows(accel * G, np.radians(gyro), np.tile([0.8, 0.5, -0.2], (t.size, 1)), sep="\t")
    return write(path, head + ["\t".join(names)]
                 + [f"{c}\t{v}" + ("\t" if trailing_tab else "") for c, v in zip(clocks, values)])


def yei(path, seconds=3.0, rate=110.0):
    t = np.arange(int(seconds * rate)) / rate
    gyro, accel = motion(t)
    fields = ["%int(ChipTimeUS)"] + [f"%float(RawGyro{a})" for a in "XYZ"] + [
        f"%float(RawCompass{a})" for a in "XYZ"] + [f"%float(RawAccel{a})" for a in "XYZ"]
    stamps = (90198 + np.round(t * 1e6)).astype(np.int64)
    body = [f"{s},{r}" for s, r in zip(stamps, rows(np.radians(gyro), np.tile([0.0, -0.52, -0.1], (t.size, 1)),
                                                      accel, fmt="%.9f"))]
    return write(path, [f' # Data format: "{",".join(fields)}"'] + body)


def read(path, fmt="csv", **declared) -> tuple[SensorSpec, np.ndarray, np.ndarray]:
    spec = SensorSpec("imu", str(path), fmt, (), **declared)
    t, v = zip(*read_stream(spec))
    return resolve(spec), np.concatenate(t), np.concatenate(v)


def expected(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gyro, accel = motion(t)
    return np.radians(gyro), accel * G


WRITERS = {"ngimu": (ngimu, 100.0), "ximu3": (ximu3, 100.0), "xsens": (xsens, 100.0), "yei": (yei, 110.0)}


@pytest.mark.parametrize("vendor", sorted(WRITERS))
def test_each_export_comes_back_in_seconds_and_si_units_at_its_rate(tmp_path, vendor):
    writer, rate = WRITERS[vendor]
    path = writer(tmp_path / "rec.imu.csv")
    assert imu_formats.detect(path).format == vendor
    spec, t, values = read(path)
    assert spec.rate_hz == pytest.approx(rate, rel=1e-3) and spec.channels[:6] == ("ax", "ay", "az", "gx", "gy", "gz")
    assert t[0] == 0.0 and np.diff(t) == pytest.approx(1 / rate, abs=2e-6)  # us, ticks and counters -> seconds
    gyro, accel = expected(t)
    np.testing.assert_allclose(values[:, 3:6], gyro, atol=1e-5)  # deg/s read as rad/s would be 57x larger
    np.testing.assert_allclose(values[:, 0:3], accel, atol=1e-4)
    assert np.abs(values[:, 3]).max() == pytest.approx(math.pi / 2, rel=1e-3)


def test_ximu_packet_steps_of_one_to_three_are_not_gaps_and_the_rate_comes_from_its_registers(tmp_path):
    path = ximu(tmp_path)
    spec, t, values = read(path)
    assert spec.layout.format == "ximu" and spec.rate_hz == 256.0
    assert t.size == 512 and np.diff(t) == pytest.approx(1 / 256)
    gyro, accel = expected(t)
    np.testing.assert_allclose(values[:, 3:6], gyro, atol=1e-5)
    assert spec.units["mx"] == "gauss"  # (G) on a magnetometer: 0.18 G = 18 uT
    assert values[0, 6] == pytest.approx(18.0)
    piece = next(window_slices(spec, [(0.0, 1.9)]))
    frames, status = resample(piece, np.arange(0.0, 1.9, 0.1))
    assert status == "ok" and frames.shape == (19, 9)


def test_xsens_counter_wraps_at_16_bits_across_chunks(tmp_path):
    path = xsens(tmp_path / "mt.txt", seconds=20.0, counter0=64000)
    layout = imu_formats.detect(path)
    chunks = list(imu_formats.read_chunks(path, "mt.txt", layout, 100.0, block_size=4096))
    assert len(chunks) > 5  # streamed, the wrap falls inside the read
    t = np.concatenate([c[:, 0] for c, _ in chunks])
    assert t.size == 2000 and np.diff(t) == pytest.approx(0.01) and t[-1] == pytest.approx(19.99)
    assert [line for _, line in chunks][0] == 6


def test_xsens_sample_time_fine_is_ten_khz_ticks(tmp_path):
    spec, t, _ = read(xsens(tmp_path / "mt.txt", fine=True, rate_line=False))
    assert spec.layout.clock == "SampleTimeFine" and np.diff(t) == pytest.approx(0.01)
    assert spec.rate_hz == pytest.approx(100.0)


def test_declared_units_rate_and_offset_win_over_the_file(tmp_path):
    path = xsens(tmp_path / "mt.txt")  # says 100 Hz
    spec, t, values = read(path, rate_hz=200.0, clock_offset_s=-0.5,
                           units={"Gyr_X": "deg/s", "gy": "deg/s", "gz": "deg/s", "t": "s"})
    assert spec.rate_hz == 200.0 and t[0] == -0.5 and np.diff(t) == pytest.approx(0.005)
    assert values[:, 3] == pytest.approx(np.radians(np.radians(motion(np.arange(300) / 100)[0][:, 0])), abs=1e-7)
    with pytest.raises(SensorError) as caught:
        read(ngimu(tmp_path / "s.csv"), units={"Temperature": "degC"})
    assert caught.value.reason == "sensor_columns" and "Temperature" in str(caught.value)


def test_plain_csv_keeps_working_and_a_declared_plain_reading_of_a_vendor_header_wins(tmp_path):
    path = write(tmp_path / "p.csv", ["t,ax,gx"] + rows(np.arange(50) / 50, np.ones(50), np.zeros(50)))
    spec, t, values = read(path, rate_hz=50.0)
    assert spec.layout is None and spec.channels == ("ax", "gx") and t.size == 50
    vendor = ngimu(tmp_path / "s.csv")
    spec = SensorSpec("imu", str(vendor), "csv", ("Time (s)", "Gyroscope X (deg/s)"), rate_hz=100.0,
                      timestamp="Time (s)")
    assert resolve(spec).layout is None and resolve(spec).channels == ("Gyroscope X (deg/s)",)


def test_sidecar_spec_detects_the_vendor_and_the_delivery_toml_wins(tmp_path):
    video = tmp_path / "walk.mp4"
    spec = sidecar_spec(ngimu(tmp_path / "walk.imu.csv"), video)
    assert (spec.stream, spec.format, spec.rate_hz) == ("imu", "ngimu", None)
    assert resolve(spec).rate_hz == pytest.approx(100.0)
    declared = sidecar_spec(tmp_path / "walk.imu.csv", video, {"rate_hz": 50, "clock_offset_s": 1.5})
    assert (declared.rate_hz, declared.clock_offset_s) == (50.0, 1.5)
    plain = write(tmp_path / "walk.gaze.csv", ["t,x,y", "0,1,2", "0.01,1,2"])
    assert sidecar_spec(plain, video) == SensorSpec("gaze", str(plain), "csv", ("t", "x", "y"), timestamp="t")
    broken = ximu(tmp_path)
    (tmp_path / "00033_Registers.csv").write_text("Packet number,Address,Value\n70,69,lots,x\n")
    assert sidecar_spec(broken, video).format == "ximu"  # never raises: the refusal comes when it is read
    for bad in ({"rate_hz": "fast"}, {"rate_hz": -1}, {"format": "excel"}, {"units": ["deg/s"]}):
        with pytest.raises(SensorError) as caught:
            sidecar_spec(tmp_path / "walk.imu.csv", video, bad)
        assert caught.value.reason == "sensor_declaration_invalid" and "walk.imu.csv" in str(caught.value)


def broken(tmp_path, vendor: str, line: int, edit) -> SensorError:
    """Write the vendor's file, apply `edit` to file line `line` (1-based), read it; the SensorError raised."""
    writer = {"ximu": lambda p: ximu(tmp_path, registers=True), **{k: w for k, (w, _) in WRITERS.items()}}[vendor]
    path = writer(tmp_path / "b.csv")
    lines = path.read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SensorError) as caught:
        read(path)
    assert path.name in str(caught.value) and f"line {line}" in str(caught.value)
    assert caught.value.line == line
    return caught.value


def test_broken_exports_are_refused_naming_the_file_line_and_reason(tmp_path):
    def cell(index, value, sep=","):
        return lambda text: sep.join(value if i == index else f for i, f in enumerate(text.split(sep)))

    assert broken(tmp_path, "ximu3", 40, cell(0, "19150794")).reason == "timestamps_not_monotonic"
    assert broken(tmp_path, "ngimu", 77, cell(2, "1.2.3")).reason == "sensor_unreadable"
    assert broken(tmp_path, "ngimu", 90, lambda text: text[:9]).reason == "sensor_unreadable"  # a cut row
    assert broken(tmp_path, "ngimu", 12, cell(0, "NaN")).reason == "timestamp_missing"
    assert broken(tmp_path, "xsens", 100, cell(0, "", "\t")).reason == "timestamp_missing"
    assert broken(tmp_path, "xsens", 100, cell(0, " 2500", "\t")).reason == "timestamps_not_monotonic"
    assert broken(tmp_path, "yei", 5, cell(4, "abc")).reason == "sensor_unreadable"
    assert broken(tmp_path, "ximu", 30, cell(0, "3")).reason == "timestamps_not_monotonic"
    error = broken(tmp_path, "ximu3", 40, cell(0, "19150794"))
    assert pickle.loads(pickle.dumps(error)).line == 40  # crosses to Beam workers intact


def test_missing_rate_wrong_vendor_and_bad_registers_are_refused(tmp_path):
    with pytest.raises(SensorError) as caught:
        read(ximu(tmp_path, registers=False))
    assert caught.value.reason == "sensor_rate_unknown" and "Registers" in str(caught.value)
    assert read(tmp_path / "00033_CalInertialAndMag.csv", rate_hz=128.0)[0].rate_hz == 128.0
    with pytest.raises(SensorError) as caught:
        read(xsens(tmp_path / "mt.txt", rate_line=False))
    assert caught.value.reason == "sensor_rate_unknown"
    with pytest.raises(SensorError) as caught:
        read(ximu3(tmp_path / "Inertial.csv"), fmt="ngimu")
    assert caught.value.reason == "sensor_columns" and "ximu3" in str(caught.value)
    ximu(tmp_path)
    (tmp_path / "00033_Registers.csv").write_text("Packet number,Address,Value,Fixed-point value,Name\n"
                                                  "70,69,0,NaN,InertialAndMagneticDataRate\n")
    with pytest.raises(SensorError) as caught:
        read(tmp_path / "00033_CalInertialAndMag.csv")
    assert caught.value.reason == "sensor_rate_unknown" and "line 2" in str(caught.value)
    slices = list(window_slices(SensorSpec("imu", str(tmp_path / "00033_CalInertialAndMag.csv"), "csv", ()),
                                [(0.0, 1.0), (1.0, 2.0)]))
    assert [s.problem for s in slices] == ["sensor_rate_unknown"] * 2


def test_garbage_and_empty_files_are_no_vendor_and_stay_refused_as_before(tmp_path):
    for payload in (b"", b"\x00\xff\xfe garbage", b"Time (s),Pressure (hPa)\n0,1\n"):
        path = tmp_path / "g.csv"
        path.write_bytes(payload)
        assert imu_formats.detect(path) is None
        slices = list(window_slices(SensorSpec("imu", str(path), "csv", ("t", "ax"), rate_hz=100.0), [(0.0, 1.0)]))
        assert slices[0].problem in ("sensor_unreadable", "sensor_columns")

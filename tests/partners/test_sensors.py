"""Sensor files: parsed, timestamps monotonic, rate as declared, no long NaN runs; bad ones named by reason."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.synth import IMU_COLUMNS, ImuSpec, imu_table, write_imu_csv, write_imu_npy
from partners.contract import SensorFile
from partners.sensors import sensor_facts


def spec(path="r.imu.csv", fmt="csv", rate=100.0, columns=IMU_COLUMNS) -> SensorFile:
    return SensorFile(stream="imu", path=path, sha256="0" * 64, bytes=1, format=fmt, columns=list(columns),
                      rate_hz=rate, timestamp="t")


@pytest.fixture
def table() -> np.ndarray:
    return imu_table(ImuSpec(seconds=2.0, rate_hz=100.0))


def test_good_csv_and_npy_measure_as_declared(tmp_path, table):
    for path, fmt in ((write_imu_csv(tmp_path / "a.csv", table), "csv"), (write_imu_npy(tmp_path / "a.npy", table), "npy")):
        facts = sensor_facts(path, spec(fmt=fmt))
        assert facts.read_reason is None and facts.rows == 200 and facts.monotonic
        assert facts.rate_ratio == pytest.approx(1.0, abs=1e-6) and facts.max_nan_run_s == 0


def test_broken_streams_show_in_their_facts(tmp_path, table):
    backwards = table.copy()
    backwards[50:60, 0] = backwards[50:60, 0][::-1]
    assert sensor_facts(write_imu_csv(tmp_path / "b.csv", backwards), spec()).monotonic is False
    assert sensor_facts(write_imu_csv(tmp_path / "r.csv", table), spec(rate=200.0)).rate_ratio == pytest.approx(0.5)
    gappy = table.copy()
    gappy[20:60, 3] = np.nan  # 0.4 s of missing accelerometer
    assert sensor_facts(write_imu_csv(tmp_path / "n.csv", gappy), spec()).max_nan_run_s == pytest.approx(0.4)


def test_unreadable_streams_get_a_reason_naming_the_file(tmp_path, table):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert sensor_facts(tmp_path / "empty.csv", spec("empty.csv")).read_reason == "sensor_unreadable"
    (tmp_path / "junk.csv").write_bytes(b"t,ax\n1,2\nthree,four\n\x00\xff")
    junk = sensor_facts(tmp_path / "junk.csv", spec("junk.csv", columns=("t", "ax")))
    assert junk.read_reason == "sensor_unreadable" and "junk.csv" in junk.read_detail
    missing = sensor_facts(write_imu_csv(tmp_path / "m.csv", table[:, :4], IMU_COLUMNS[:4]), spec("m.csv"))
    assert missing.read_reason == "sensor_columns" and "gx" in missing.read_detail
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, "
                                          b"'shape': (1,), }" + b" " * 40 + b"\n" + b"\x80\x04N.")
    assert sensor_facts(tmp_path / "pickle.npy", spec("pickle.npy", fmt="npy")).read_reason == "sensor_unreadable"

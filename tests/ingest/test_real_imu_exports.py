"""Real device exports of five IMU families (the test data of scikit-kinematics 0.10.4, BSD-3-Clause, © Thomas
Haslwanter: its wheel is fetched by `make install` into .venv/fixtures, never imported) read as sidecars of a video:
at their rate, and in SI units, which gravity checks: a device at rest or walking reads about 9.8 m/s^2."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ingest.sensors import read_stream, resolve, sidecar_spec

WHEEL = "scikit_kinematics-0.10.4-py3-none-any.whl"
# vendor: (files in the wheel -> name beside the video, the export's own sample rate in Hz, and how close)
EXPORTS = {
    "xsens_mt_manager": ({"tests/data/data_xsens.txt": "rec.imu.txt"}, 50.0, 0.01),
    "ximu_gui": ({"tests/data/data_xio/00033_CalInertialAndMag.csv": "rec.imu.csv",
                  "tests/data/data_xio/00033_Registers.csv": "rec.imu_Registers.csv"}, 256.0, 0.01),
    "ngimu": ({"tests/data/data_ngimu/sensors.csv": "rec.imu.csv"}, 50.0, 0.05),
    "ximu3": ({"tests/data/data_xio3/Inertial.csv": "rec.imu.csv"}, 50.0, 0.05),
    "yei_3space": ({"tests/data/data_yei.txt": "rec.imu.txt"}, 110.0, 0.05),
}


@pytest.fixture(scope="module")
def wheel() -> zipfile.ZipFile:
    path = Path(sys.prefix) / "fixtures" / WHEEL
    assert path.is_file(), f"{path} is missing: `make install` fetches it (pip download --no-deps scikit-kinematics)"
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.mark.parametrize("vendor", sorted(EXPORTS))
def test_a_real_export_reads_at_its_rate_in_si_units(vendor, wheel, tmp_path):
    files, rate, tolerance = EXPORTS[vendor]
    for member, name in files.items():
        (tmp_path / name).write_bytes(wheel.read(member))
    sidecar = tmp_path / next(iter(files.values()))
    spec = sidecar_spec(sidecar, tmp_path / "rec.mp4")
    chunks = list(read_stream(spec))
    times = np.concatenate([t for t, _ in chunks])
    values = np.concatenate([v for _, v in chunks])
    channels = list(resolve(spec).channels)
    assert len(times) > 400 and np.all(np.diff(times) > 0)
    assert abs(1.0 / float(np.median(np.diff(times))) - rate) <= tolerance * rate
    accel = values[:, [channels.index(c) for c in ("ax", "ay", "az")]]
    gyro = values[:, [channels.index(c) for c in ("gx", "gy", "gz")]]
    gravity = float(np.median(np.linalg.norm(accel, axis=1)))
    assert 8.8 < gravity < 10.8, f"{vendor}: median |accel| {gravity:.2f} m/s^2: units not converted"
    assert float(np.percentile(np.abs(gyro), 99)) < 35.0, f"{vendor}: gyro above 2000 deg/s: read as deg/s"

"""Sensor files: parsed, timestamps monotonic, rate as declared, no long NaN runs; bad ones named by reason."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.synth import IMU_COLUMNS, ImuSpec, imu_table, write_imu_csv, write_imu_npy
from partners.contract import SensorFile
from partners.errors import ContractError
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


NGIMU_HEADER = ("Time (s),Gyroscope X (deg/s),Gyroscope Y (deg/s),Gyroscope Z (deg/s),Accelerometer X (g),"
                "Accelerometer Y (g),Accelerometer Z (g)")


def ngimu(path, rows=300, rate=100.0):
    t = np.arange(rows) / rate
    body = "\n".join(f"{s + 7.0:.6f},{90 * np.sin(np.pi * s):.4f},0,0,0,0,1" for s in t)
    path.write_text(NGIMU_HEADER + "\n" + body + "\n")
    return path


def test_a_vendor_export_delivered_as_csv_is_measured_with_its_own_layout(tmp_path):
    path = ngimu(tmp_path / "r.imu.csv")
    as_built = SensorFile(stream="imu", path="r.imu.csv", sha256="0" * 64, bytes=1, format="csv",
                          columns=NGIMU_HEADER.split(","), rate_hz=100.0)  # what `alliance deliver` writes
    facts = sensor_facts(path, as_built)
    assert facts.read_reason is None and facts.rows == 300 and facts.monotonic
    assert facts.rate_ratio == pytest.approx(1.0, abs=1e-3) and facts.max_nan_run_s == 0
    named = SensorFile(stream="imu", path="r.imu.csv", sha256="0" * 64, bytes=1, format="ngimu")  # no rate: its own
    assert named.rate_hz is None and sensor_facts(path, named).rate_hz == pytest.approx(100.0, rel=1e-3)


def test_a_broken_vendor_export_names_its_line(tmp_path):
    path = ngimu(tmp_path / "r.imu.csv")
    lines = path.read_text().splitlines()
    lines[41] = lines[41].replace(",0,0,0,", ",0,zero,0,")
    path.write_text("\n".join(lines) + "\n")
    facts = sensor_facts(path, SensorFile(stream="imu", path="r.imu.csv", sha256="0" * 64, bytes=1, format="ngimu"))
    assert facts.read_reason == "sensor_unreadable" and "r.imu.csv" in facts.read_detail
    assert "line 42" in facts.read_detail and "zero" in facts.read_detail


def test_rate_is_optional_only_where_the_format_can_carry_it():
    from pydantic import ValidationError

    base = dict(stream="imu", path="r.imu.csv", sha256="0" * 64, bytes=1)
    assert SensorFile(**base, format="xsens").columns == []
    with pytest.raises(ValidationError, match="rate_hz is required"):
        SensorFile(**base, format="csv", columns=["t", "ax"])
    with pytest.raises(ValidationError, match="unknown columns"):
        SensorFile(**base, format="csv", columns=["t", "ax"], rate_hz=100.0, units={"gx": "rad/s"})


def test_vendor_txt_exports_beside_videos_are_found_and_declared_by_the_cli(tmp_path, media):
    """Xsens MT Manager and YEI 3-Space exports are .txt: found as sidecars, declared with their vendor format, and
    measured by ingest's readers; a plain table still needs its rate, and says so naming the file."""
    from partners.folder import check
    from tests.ingest.test_imu_formats import xsens, yei
    from tests.partners.conftest import METADATA, make_folder

    plain = METADATA.split("[sensors.imu]")[0] + "[sensors.imu]\n"
    folder = make_folder(tmp_path / "vendors", media, {"a.mp4": media.good, "b.mp4": media.good2}, plain)
    xsens(folder / "a.imu.txt", seconds=2.0)
    yei(folder / "b.imu.txt", seconds=2.0)
    manifest, assessment = check(folder)
    formats = {s.path: (s.format, s.columns, s.rate_hz) for r in manifest.recordings for s in r.sensors}
    assert formats == {"a.imu.txt": ("xsens", [], None), "b.imu.txt": ("yei", [], None)}
    assert all(f.verdict == "accepted" for f in assessment.files), [f.problems for f in assessment.files]
    (folder / "b.imu.txt").unlink()
    (folder / "a.imu.txt").rename(folder / "a.imu.csv")  # an Xsens export named .csv: its `//` line is no header
    manifest, assessment = check(folder)
    assert manifest.recordings[0].sensors[0].format == "xsens"
    (folder / "delivery.toml").write_text(plain.replace("[sensors.imu]\n", '[sensors.imu]\nformat = "csv"\n'
                                                        'columns = ["t", "ax"]\n'))
    with pytest.raises(ContractError) as refused:
        check(folder)
    assert refused.value.reason == "sensor_columns" and "a.imu.csv" in str(refused.value)

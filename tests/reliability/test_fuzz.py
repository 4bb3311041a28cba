"""Fuzzing with hypothesis: manifests, sensor files and byte mutations of a real MP4; only the documented errors."""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alliance.store import validate_key
from ingest.errors import DECODE_REASONS, DecodeError
from ingest.probe import probe
from ingest.sensors import SensorError, SensorSpec, read_stream, resample, window_slices
from partners.contract import (ManifestLimits, SensorFile, contract_problems, file_key, landing_prefix,
                               parse_manifest)
from partners.errors import PartnerError
from partners.sensors import sensor_facts
from tests.reliability.conftest import count, record
from tests.reliability.harness import measure

FUZZ = settings(max_examples=count(60, 1000), deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
PROBE_FUZZ = settings(FUZZ, max_examples=count(25, 300))
TALLY: dict[str, int] = {}
# numpy warns about empty CSV bodies and discarded imaginary parts: the outcome is what these tests judge
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::numpy.exceptions.ComplexWarning")


def tally(name: str) -> None:
    TALLY[name] = TALLY.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    record("fuzz", **TALLY)


# --------------------------------------------------------------------------- manifests


def valid_manifest() -> dict:
    return {
        "partner": "glassco", "delivery": "batch-1", "license": "CC-BY-4.0",
        "consent": {"scope": ["pretraining"], "expires": "2099-01-01", "faces_allowed": False},
        "recordings": [{
            "path": "day1/walk.mp4", "sha256": "a" * 64, "bytes": 1000, "media_type": "video/mp4",
            "device": {"kind": "glasses", "model": "G1", "mounting": "head",
                       "intrinsics": {"fx": 500, "fy": 500, "cx": 32, "cy": 32}},
            "start_time": "2026-11-01T10:00:00Z", "duration_s": 2.0,
            "sensors": [{"stream": "imu", "path": "day1/walk.imu.csv", "sha256": "b" * 64, "bytes": 10,
                         "format": "csv", "columns": ["t", "ax"], "units": {"ax": "m/s^2"}, "rate_hz": 100,
                         "timestamp": "t"}]}],
    }


NASTY_STRINGS = st.sampled_from([
    "", ".", "..", "../x.mp4", "/etc/passwd", "a//b", "a\\b", "C:x", "a/\x00b", "\u202e4pm.exe", "a" * 5000,
    "x/" * 40 + "y", "~/.ssh/id_rsa", "%2e%2e/x", "file:///etc/passwd", "http://169.254.169.254/", "NaN",
    "Infinity", "1e400", "-0", "9" * 400, "\ud7ff", "🎥.mp4", "CON", "a/./b", " ", "\n", "pretraining ",
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=40), NASTY_STRINGS)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                    max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated_manifests(draw) -> dict:
    """A valid manifest with a few of its fields replaced, removed, duplicated or joined by strangers."""
    data = valid_manifest()
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(JSON)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return data


def check_manifest(raw) -> None:
    """Either a documented refusal, or a manifest that every later step can use safely."""
    try:
        manifest = parse_manifest(raw, ManifestLimits(max_bytes=256 << 10))
    except PartnerError as e:
        assert e.reason and e.reason == e.reason.lower() and " " not in e.reason, e.reason
        assert str(e), "a refusal without a message"
        tally("manifest_refused")
        return
    tally("manifest_accepted")
    contract_problems(manifest)
    canonical = manifest.canonical_json()
    json.loads(canonical, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c} in {canonical[:200]}"))
    assert parse_manifest(canonical).canonical_json() == canonical
    prefix = landing_prefix(manifest.partner, manifest.delivery) + "/files/"
    for file in manifest.files():
        key = file_key(manifest.partner, manifest.delivery, file.path)
        assert validate_key(key) == key and key.startswith(prefix) and ".." not in key.split("/")
    for recording in manifest.recordings:
        assert recording.duration_s is None or math.isfinite(recording.duration_s)
        for sensor in recording.sensors:
            assert math.isfinite(sensor.rate_hz) and math.isfinite(sensor.clock_offset_s)


@FUZZ
@given(st.binary(max_size=2048))
def test_manifest_from_arbitrary_bytes(raw):
    check_manifest(raw)


@FUZZ
@given(JSON)
def test_manifest_from_arbitrary_json(document):
    check_manifest(json.dumps(document).encode())


@FUZZ
@given(mutated_manifests())
def test_manifest_from_mutations_of_a_valid_one(document):
    check_manifest(json.dumps(document).encode())
    check_manifest(document)  # the service may hand over an already parsed body


@settings(FUZZ, max_examples=count(20, 200))
@given(st.integers(1, 40), st.sampled_from(["[", '{"a":']))
def test_manifest_nesting_and_size_bombs(depth, opener):
    closer = "]" if opener == "[" else "}"
    check_manifest((opener * depth * 50 + ("" if opener == "[" else "1") + closer * depth * 50).encode())
    check_manifest(json.dumps({"partner": "x" * depth * 10_000}).encode())


# --------------------------------------------------------------------------- sensor files

CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**20, 10**20).map(str),
                  st.sampled_from(["", "nan", "NaN", "NA", "inf", "-inf", "1e999", "0x10", "1,5", '"1"', "true",
                                   " 3 ", "\x00", "é", "1e-400", "--1"]), st.text(max_size=6))
COLUMNS = ["t", "ax", "ay", "az"]


@st.composite
def csv_bytes(draw) -> bytes:
    header = draw(st.one_of(st.just(COLUMNS), st.lists(st.sampled_from(COLUMNS + ["x", "", "t "]), max_size=6)))
    width = draw(st.integers(0, 6))
    rows = draw(st.lists(st.lists(CELLS, min_size=width, max_size=width), max_size=30))
    text = ",".join(header) + "\n" + "\n".join(",".join(row) for row in rows)
    raw = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        raw = raw.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r", b"\n\n"])))
    return raw


@st.composite
def npy_bytes(draw) -> bytes:
    dtype = draw(st.sampled_from(["<f8", "<f4", "<i8", "<u1", "<f2", "<c16", "|b1", "<M8[s]", "|S3", "<U2"]))
    shape = draw(st.sampled_from([(0,), (5,), (0, 4), (3, 4), (20, 4), (4, 3), (2, 4, 1), ()]))
    buffer = io.BytesIO()
    values = np.asarray(draw(st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, 0.0])),
                                      min_size=1, max_size=8)))
    size = int(np.prod(shape)) if shape else 1
    array = np.resize(values, size).reshape(shape) if size else np.empty(shape)
    if dtype in ("<M8[s]", "|S3", "<U2"):
        array = np.zeros(shape, dtype=dtype)
    else:
        with np.errstate(all="ignore"):
            array = array.astype(dtype)
    np.save(buffer, array, allow_pickle=False)
    raw = buffer.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:
        raw = raw[:cut]
    return raw


def _sensor_file(fmt: str) -> SensorFile:
    return SensorFile(stream="imu", path=f"rec.imu.{fmt}", sha256="b" * 64, bytes=1, format=fmt, columns=COLUMNS,
                      units={"ax": "g", "ay": "m/s^2"}, rate_hz=100.0)


def check_sensor(tmp_path: Path, raw: bytes, fmt: str) -> None:
    path = tmp_path / f"s.{fmt}"
    path.write_bytes(raw)
    try:
        facts = sensor_facts(path, _sensor_file(fmt))  # documented: never raises for bad partner bytes
    except zipfile.BadZipFile:
        if not (fmt == "npy" and raw.startswith(b"PK\x03\x04")):
            raise
        tally("sensor_known_bug")  # pinned by test_partner_sensor_facts_refuses_a_zip_named_npy
        return
    assert facts.read_reason in (None, "sensor_unreadable", "sensor_columns"), facts.read_reason
    tally(f"sensor_{fmt}_{'unreadable' if facts.read_reason else 'read'}")
    spec = SensorSpec(stream="imu", path=str(path), format=fmt, columns=tuple(COLUMNS),
                      units={"ax": "g", "ay": "m/s^2"}, rate_hz=100.0, label=f"landing/p/d/files/rec.imu.{fmt}")
    try:
        for t, values in read_stream(spec):
            assert t.ndim == 1 and values.shape == (t.size, 3)
            assert np.isfinite(values).all() and (np.diff(t) > 0).all()
    except SensorError as e:
        assert e.reason in ("sensor_columns", "sensor_unreadable", "timestamps_not_monotonic"), e.reason
        assert spec.label in str(e)
    except (EOFError, ValueError, zipfile.BadZipFile) as e:
        if not known_sensor_bug(raw, fmt, e):
            raise
        tally("sensor_known_bug")
        return  # pinned by the regression tests below; the fuzzing goes on looking for others
    windows = [(0.0, 0.05), (0.05, 0.1), (0.1, 10.0)]
    slices = list(window_slices(spec, windows))
    assert len(slices) == len(windows)
    for piece in slices:
        frames, status = resample(piece, np.linspace(0.0, 0.1, 4))
        assert status in ("ok", "sensor_gap", "sensor_invalid")
        assert frames is None or (frames.shape == (4, 3) and frames.dtype == np.float32)


def known_sensor_bug(raw: bytes, fmt: str, error: Exception) -> bool:
    """The ingest sensor-reader bugs the regression tests below pin (an empty or non-numeric .npy, a non-UTF-8 CSV)."""
    if fmt == "csv":
        return isinstance(error, UnicodeDecodeError)
    if isinstance(error, EOFError) or (isinstance(error, zipfile.BadZipFile) and raw.startswith(b"PK\x03\x04")):
        return True
    try:
        kind = np.load(io.BytesIO(raw), allow_pickle=False).dtype.kind
    except (OSError, ValueError, EOFError):
        return False
    return kind in "SUMm"


def test_ingest_sensor_reader_refuses_an_empty_npy_with_a_sensor_error(tmp_path):
    """Regression (found here, fixed in eff9135; ingest/sensors.py _chunks): np.load of a 0-byte .npy raises EOFError, which is neither caught there
    nor by window_slices: the ingest worker gets a raw EOFError instead of a sensor_unreadable refusal."""
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    spec = SensorSpec(stream="imu", path=str(path), format="npy", columns=tuple(COLUMNS), rate_hz=100.0)
    with pytest.raises(SensorError) as caught:
        list(read_stream(spec))
    assert caught.value.reason == "sensor_unreadable"
    assert [s.problem for s in window_slices(spec, [(0.0, 1.0)])] == ["sensor_unreadable"]


def test_ingest_sensor_reader_refuses_a_non_numeric_npy_with_a_sensor_error(tmp_path):
    """Regression (found here, fixed in eff9135; ingest/sensors.py _chunks): a .npy of strings (or dates) with the declared column count raises a raw
    ValueError ('could not convert string to float') from np.asarray(..., float64), uncaught by window_slices."""
    path = tmp_path / "strings.npy"
    np.save(path, np.array([[b"a", b"b", b"c", b"d"]] * 3, dtype="|S3"))
    spec = SensorSpec(stream="imu", path=str(path), format="npy", columns=tuple(COLUMNS), rate_hz=100.0)
    with pytest.raises(SensorError) as caught:
        list(read_stream(spec))
    assert caught.value.reason in ("sensor_unreadable", "sensor_columns")
    assert [s.problem for s in window_slices(spec, [(0.0, 1.0)])] != [""]


def test_ingest_sensor_reader_refuses_a_csv_whose_header_is_not_utf8(tmp_path):
    """Regression (found here, fixed in eff9135; ingest/sensors.py _chunks): a CSV whose header holds non-UTF-8 bytes raises a raw UnicodeDecodeError
    from pyarrow's reader.schema.names, uncaught by window_slices (partners' own reader refuses it properly)."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"t,ax,ay,a\xe9z\n0.0,1,2,3\n0.01,1,2,3\n")
    spec = SensorSpec(stream="imu", path=str(path), format="csv", columns=tuple(COLUMNS), rate_hz=100.0)
    with pytest.raises(SensorError) as caught:
        list(read_stream(spec))
    assert caught.value.reason in ("sensor_unreadable", "sensor_columns")


def test_partner_sensor_facts_refuses_a_zip_named_npy(tmp_path):
    """Regression (found here, fixed in 5ec5025 and 8977530; partners/sensors.py _load, ingest/sensors.py _chunks): a sensor file declared npy that starts
    with the zip magic 'PK\\x03\\x04' makes np.load try it as an .npz and raise zipfile.BadZipFile, which neither
    catches (they catch OSError/ValueError): sensor_facts, documented never to raise on partner bytes, raises."""
    path = tmp_path / "imu.npy"
    path.write_bytes(b"PK\x03\x04 not a zip at all")
    facts = sensor_facts(path, _sensor_file("npy"))
    assert facts.read_reason == "sensor_unreadable"
    spec = SensorSpec(stream="imu", path=str(path), format="npy", columns=tuple(COLUMNS), rate_hz=100.0)
    assert [s.problem for s in window_slices(spec, [(0.0, 1.0)])] == ["sensor_unreadable"]


@FUZZ
@given(csv_bytes())
def test_sensor_csv_files(tmp_path, raw):
    check_sensor(tmp_path, raw, "csv")


@FUZZ
@given(npy_bytes())
def test_sensor_npy_files(tmp_path, raw):
    check_sensor(tmp_path, raw, "npy")


@FUZZ
@given(st.binary(max_size=1024), st.sampled_from(["csv", "npy"]))
def test_sensor_files_of_arbitrary_bytes(tmp_path, raw, fmt):
    check_sensor(tmp_path, raw, fmt)


# --------------------------------------------------------------------------- the media probe


@pytest.fixture(scope="module")
def small_mp4(tmp_path_factory) -> bytes:
    from ingest.synth import VideoSpec, write_video

    return write_video(tmp_path_factory.mktemp("fuzz") / "good.mp4", VideoSpec(frames=12, gop=4)).read_bytes()


@st.composite
def mutations(draw, size: int):
    """A few edits of a file: overwritten bytes, a flipped bit, a 32-bit field set to an edge value, a cut, a splice."""
    edits = []
    for _ in range(draw(st.integers(1, 6))):
        # in-place edits three times as often: they keep the box structure and reach the demuxer and decoder
        kind = draw(st.sampled_from(["byte", "bit", "word"] * 3 + ["cut", "insert", "delete"]))
        at = draw(st.integers(0, size - 1))
        if kind == "byte":
            edits.append((kind, at, draw(st.integers(0, 255))))
        elif kind == "bit":
            edits.append((kind, at, draw(st.integers(0, 7))))
        elif kind == "word":
            edits.append((kind, at, draw(st.sampled_from([0, 1, 7, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                                          0xFFFFFFF0, 65535, 16000]))))
        elif kind == "insert":
            edits.append((kind, at, draw(st.binary(min_size=1, max_size=16))))
        else:
            edits.append((kind, at, draw(st.integers(1, 64))))
    return edits


def apply(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, at, value in edits:
        at = min(at, max(0, len(out) - 1))
        if kind == "byte" and out:
            out[at] = value
        elif kind == "bit" and out:
            out[at] ^= 1 << value
        elif kind == "word":
            out[at:at + 4] = value.to_bytes(4, "big")
        elif kind == "cut":
            del out[max(1, len(out) - value * 50):]
        elif kind == "insert":
            out[at:at] = value
        elif kind == "delete":
            del out[at:at + value]
    return bytes(out)


@PROBE_FUZZ
@given(data=st.data())
def test_probe_on_byte_mutations_of_a_real_mp4(tmp_path, small_mp4, data):
    edits = data.draw(mutations(len(small_mp4)))
    path = tmp_path / "mutant.mp4"
    path.write_bytes(apply(small_mp4, edits))
    decode_all = data.draw(st.booleans())
    measured = measure(functools.partial(probe, path, timeout_s=5.0, decode_all=decode_all), (DecodeError,),
                       hang_after_s=60)
    assert measured.outcome in ("ok", "refused"), f"{edits}: {measured.outcome}: {measured.value}"
    assert measured.elapsed_s < 5.0 + 10.0, f"{edits}: {measured.elapsed_s:.1f} s"  # slack: 2 busy cores
    assert measured.peak_rss_mb < 1024, f"{edits}: {measured.peak_rss_mb:.0f} MB"
    if measured.outcome == "refused":
        assert measured.reason in DECODE_REASONS
        tally(f"probe_refused_{measured.reason}")
    else:
        result = measured.value
        assert result.width * result.height <= 4096 * 4096 and result.packets >= 1
        assert math.isfinite(result.duration_s) and math.isfinite(result.fps_real)
        tally("probe_accepted")

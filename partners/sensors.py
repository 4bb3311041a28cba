"""Facts about one delivered sensor file (IMU and the like): does it parse, are its timestamps sane, its rate as declared."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.sensors import SensorError, SensorSpec, canonical_unit, resolve, rows
from partners.contract import SensorFile

MAX_SENSOR_BYTES = 512 << 20


@dataclass(frozen=True)
class SensorFacts:
    """What was measured in a sensor file; `read_reason` is set when it could not be read at all."""

    path: str
    stream: str
    read_reason: str | None
    read_detail: str
    rows: int
    monotonic: bool | None
    rate_hz: float | None  # measured from the median timestamp step
    rate_ratio: float | None  # measured / declared
    max_nan_run_s: float | None
    first_bad_row: int | None = None  # the first data row whose timestamp does not increase


class _Unreadable(ValueError):
    """A sensor file whose layout contradicts its manifest entry."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _unreadable(spec: SensorFile, reason: str, detail: str) -> SensorFacts:
    return SensorFacts(spec.path, spec.stream, reason, detail, 0, None, None, None, None)


def _load(path: Path, spec: SensorFile) -> np.ndarray:
    """The file as a float64 [rows, columns] array in the declared column order."""
    if spec.format == "npy":
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":  # np.load would take a zip (npz) or pickle as well
                raise _Unreadable("sensor_unreadable", "not a .npy array (the file lacks the NPY magic bytes)")
        table = np.load(path, allow_pickle=False)  # never unpickle partner bytes
        if not isinstance(table, np.ndarray) or table.dtype.kind not in "biuf":
            raise _Unreadable("sensor_unreadable", f"a .npy of {getattr(table, 'dtype', type(table))}; "
                              "the stream must be a 2-D numeric array")
        if table.ndim != 2 or table.shape[1] != len(spec.columns):
            raise _Unreadable("sensor_columns", f"array of shape {table.shape}, the manifest declares "
                             f"{len(spec.columns)} columns {spec.columns}")
        return table.astype(np.float64, copy=False)
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", errors="replace").strip().split(",")
        header = [name.strip() for name in header]
        missing = [c for c in spec.columns if c not in header]
        if missing:
            raise _Unreadable("sensor_columns", f"columns {missing} are declared but the CSV header is {header}")
        body = f.read()
    table = np.genfromtxt(io.BytesIO(body), delimiter=",", dtype=np.float64, ndmin=2, invalid_raise=True,
                          missing_values=("", "nan", "NaN"), filling_values=np.nan)
    if table.size == 0:
        return np.empty((0, len(spec.columns)))
    if table.shape[1] != len(header):
        raise _Unreadable("sensor_columns", f"rows have {table.shape[1]} values, the header names {len(header)}")
    return table[:, [header.index(c) for c in spec.columns]]


def _longest_nan_run(values: np.ndarray) -> int:
    """The longest run of consecutive rows with a NaN in any column."""
    bad = np.isnan(values).any(axis=1)
    if not bad.any():
        return 0
    edges = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max())


def _vendor_facts(resolved: SensorSpec, spec: SensorFile) -> SensorFacts:
    """Facts of a vendor export, streamed a block at a time (the same reader ingest uses)."""
    _, factor = canonical_unit(resolved.units.get("t", "s"))
    count, last, nan_run, longest = 0, None, 0, 0
    medians: list[float] = []
    first_bad = None
    for t, values, _ in rows(resolved):
        t = t * factor
        steps = np.diff(t if last is None else np.concatenate([[last], t]))
        if first_bad is None and (steps <= 0).any():
            first_bad = count + int(np.argmax(steps <= 0)) + (2 if last is None else 1)
        if steps[steps > 0].size:
            medians.append(float(np.median(steps[steps > 0])))
        bad = np.isnan(values).any(axis=1)
        for missing in bad:  # runs carry over chunk boundaries
            nan_run = nan_run + 1 if missing else 0
            longest = max(longest, nan_run)
        count += len(t)
        last = float(t[-1]) if len(t) else last
    if count < 2:
        return _unreadable(spec, "sensor_unreadable", f"{spec.path}: {count} rows; a stream needs at least two")
    rate = float(1.0 / np.median(medians)) if medians else None
    expected = spec.rate_hz or resolved.layout.rate_hz or rate
    return SensorFacts(spec.path, spec.stream, None, "", count, first_bad is None, rate,
                       None if rate is None or not expected else rate / expected,
                       longest / expected if expected else None, first_bad)


def sensor_facts(path: str | Path, spec: SensorFile) -> SensorFacts:
    """Measure a sensor file against its manifest entry; never raises for bad partner bytes."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return _unreadable(spec, "sensor_unreadable", f"{spec.path}: the file is empty")
    if size > MAX_SENSOR_BYTES:
        return _unreadable(spec, "sensor_unreadable", f"{spec.path}: {size} bytes, above the {MAX_SENSOR_BYTES} "
                           "byte limit for one sensor file: split the recording")
    try:
        resolved = resolve(SensorSpec.from_manifest(spec.model_dump(), str(path), label=spec.path))
        if resolved.layout is not None:
            return _vendor_facts(resolved, spec)
    except SensorError as e:
        return _unreadable(spec, e.reason, f"{spec.path}: {e.detail}: fix the file or its manifest entry")
    try:
        table = _load(path, spec)
    except _Unreadable as e:
        return _unreadable(spec, e.reason, f"{spec.path}: {e}: fix the file or its manifest entry")
    except (OSError, ValueError) as e:
        return _unreadable(spec, "sensor_unreadable", f"{spec.path}: cannot read it as {spec.format}: {e}")
    if len(table) < 2:
        return _unreadable(spec, "sensor_unreadable", f"{spec.path}: {len(table)} rows; a stream needs at least two")
    t = table[:, spec.columns.index(spec.timestamp)]
    steps = np.diff(t)
    finite = steps[np.isfinite(steps)]
    bad = np.flatnonzero(~(steps > 0))
    monotonic = bool(np.isfinite(t).all() and bad.size == 0)
    rate = float(1.0 / np.median(finite)) if finite.size and np.median(finite) > 0 else None
    values = np.delete(table, spec.columns.index(spec.timestamp), axis=1)
    return SensorFacts(spec.path, spec.stream, None, "", len(table), monotonic, rate,
                       None if rate is None else rate / spec.rate_hz, _longest_nan_run(values) / spec.rate_hz,
                       int(bad[0]) + 2 if bad.size else None)

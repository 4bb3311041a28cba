"""Sensor streams (IMU first): read as declared, convert units, slice per clip window, resample to frame times."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from alliance.errors import AllianceError

if TYPE_CHECKING:
    from ingest.imu_formats import ImuLayout

CHUNK_ROWS = 65536
# unit as declared -> (canonical unit, factor to it)
UNITS: dict[str, tuple[str, float]] = {
    "m/s^2": ("m/s^2", 1.0), "m/s2": ("m/s^2", 1.0), "g": ("m/s^2", 9.80665), "mg": ("m/s^2", 9.80665e-3),
    "rad/s": ("rad/s", 1.0), "mrad/s": ("rad/s", 1e-3), "deg/s": ("rad/s", math.pi / 180),
    "dps": ("rad/s", math.pi / 180), "°/s": ("rad/s", math.pi / 180),
    "ut": ("uT", 1.0), "µt": ("uT", 1.0), "t": ("uT", 1e6), "mt": ("uT", 1e3), "gauss": ("uT", 100.0),
    "s": ("s", 1.0), "ms": ("s", 1e-3), "us": ("s", 1e-6), "µs": ("s", 1e-6), "ns": ("s", 1e-9),
}
SENSOR_REASONS = frozenset({"sensor_columns", "sensor_unreadable", "timestamps_not_monotonic", "timestamp_missing",
                            "sensor_rate_unknown", "sensor_declaration_invalid"})
TABLE_FORMATS = ("csv", "npy")  # any other format is a vendor export (ingest.imu_formats.FORMATS)


class SensorError(AllianceError):
    """A sensor file that cannot be used as declared; `reason` is stable snake_case, the message names the file
    (and `line`, the 1-based file line at fault, where one is)."""

    def __init__(self, path: str, reason: str, detail: str, line: int | None = None):
        self.path, self.reason, self.detail, self.line = str(path), reason, detail, line
        super().__init__(f"{self.path}: {detail} ({reason})")

    def __reduce__(self):
        return (SensorError, (self.path, self.reason, self.detail, self.line))


def canonical_unit(unit: str) -> tuple[str, float]:
    """(canonical unit, factor); units we do not know pass through unchanged."""
    return UNITS.get(unit.strip().lower(), (unit, 1.0)) if unit else ("", 1.0)


@dataclass(frozen=True)
class SensorSpec:
    """One declared stream of a recording: where its file is and how to read it (from the delivery manifest)."""

    stream: str  # "imu", "gaze", ...
    path: str  # a local path (ingest workers fetch store files first)
    format: str  # "csv" (plain, or a vendor export recognised by its header), "npy", or an imu_formats.FORMATS name
    columns: tuple[str, ...]  # timestamp included; vendor exports: filled from the file by resolve()
    units: Mapping[str, str] = field(default_factory=dict)  # declared ones win over what a vendor file says
    rate_hz: float | None = None  # declared; None: the file's own (vendor header, registers) or measured
    clock_offset_s: float = 0.0  # added to sensor timestamps gives seconds from the video's start
    timestamp: str = "t"
    label: str = ""  # how messages name the file (its store key); the local path when empty
    layout: "ImuLayout | None" = None  # set by resolve() for a vendor export

    @property
    def name(self) -> str:
        return self.label or self.path

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c != self.timestamp)

    @property
    def max_gap_s(self) -> float:
        """Longest interval between samples that interpolation may bridge (0.1 s until the rate is known)."""
        return max(0.1, 2.5 / self.rate_hz) if self.rate_hz else 0.1

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], path: str, label: str = "") -> "SensorSpec":
        """From one `sensors` item of a delivery manifest (plain JSON), its file at `path`."""
        rate = entry.get("rate_hz")
        return cls(stream=entry["stream"], path=path, format=entry["format"],
                   columns=tuple(entry.get("columns") or ()), units=dict(entry.get("units") or {}),
                   rate_hz=None if rate is None else float(rate),
                   clock_offset_s=float(entry.get("clock_offset_s") or 0.0), timestamp=entry.get("timestamp", "t"),
                   label=label)


@dataclass(frozen=True)
class SensorSlice:
    """A stream's samples around one clip window, in video seconds and canonical units; or why there are none."""

    stream: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    times: np.ndarray  # float64 [n], video seconds, strictly increasing
    values: np.ndarray  # float64 [n, channels], NaN rows dropped
    max_gap_s: float
    problem: str = ""  # a SENSOR_REASONS reason when the stream could not be used for this window
    detail: str = ""  # the SensorError message behind the problem


# --------------------------------------------------------------------------- reading


def _chunks(spec: SensorSpec) -> Iterator[np.ndarray]:
    """The file as float64 [rows, columns] chunks in the declared column order."""
    path = Path(spec.path)
    if spec.format == "npy":
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":  # np.load would also try zip (.npz) and pickle files
            raise SensorError(spec.name, "sensor_unreadable", "is not a .npy file (no NUMPY magic); save the "
                                                              "array with np.save")
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickle partner bytes
        except (OSError, ValueError, EOFError) as e:
            raise SensorError(spec.name, "sensor_unreadable",
                              f"cannot read it as .npy ({e}); save it with np.save") from e
        if table.ndim != 2 or table.shape[1] != len(spec.columns):
            raise SensorError(spec.name, "sensor_columns", f"array of shape {table.shape}, the manifest declares "
                                                           f"{len(spec.columns)} columns {list(spec.columns)}")
        if table.dtype.kind not in "biuf":
            raise SensorError(spec.name, "sensor_unreadable", f"holds {table.dtype} values, not numbers; save a "
                                                              f"float or integer array")
        for start in range(0, table.shape[0], CHUNK_ROWS):
            yield np.asarray(table[start:start + CHUNK_ROWS], dtype=np.float64)
        return
    if spec.format != "csv":
        raise SensorError(spec.name, "sensor_unreadable", f"format {spec.format!r}: declare csv or npy")
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20),
                                convert_options=pacsv.ConvertOptions(null_values=["", "nan", "NaN", "NA"]))
        header = [name.strip() for name in reader.schema.names]
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        raise SensorError(spec.name, "sensor_unreadable", f"cannot read it as UTF-8 CSV with a header ({e})") from e
    missing = [c for c in spec.columns if c not in header]
    if missing:
        raise SensorError(spec.name, "sensor_columns", f"columns {missing} are declared but the CSV header is "
                                                       f"{header}: fix the header or the manifest")
    index = [header.index(c) for c in spec.columns]
    try:
        for batch in reader:
            columns = [batch.column(i) for i in index]
            yield np.stack([c.to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], axis=1)
    except (pa.ArrowInvalid, ValueError, TypeError, UnicodeDecodeError) as e:
        raise SensorError(spec.name, "sensor_unreadable", f"a value is not a number ({e}); write numbers only") from e


def _vendor_layout(spec: SensorSpec) -> "ImuLayout | None":
    """The vendor layout to read the file with, or None to read it as a plain table (declared columns)."""
    from ingest import imu_formats

    if spec.format == "npy":
        return None
    if spec.format != "csv":
        return imu_formats.layout_for(spec.path, spec.name, spec.format)
    layout = imu_formats.detect(spec.path)
    if layout is None or (spec.timestamp in spec.columns and _plain_header_has(spec)):
        return None  # declared columns that the header holds: the partner chose to read it as a plain table
    return layout


def _header(path: str | Path) -> tuple[str, ...]:
    with open(path, "rb") as f:
        return tuple(c.strip() for c in f.readline().decode("utf-8", errors="replace").strip().split(","))


def _plain_header_has(spec: SensorSpec) -> bool:
    header = _header(spec.path)
    return all(c in header for c in spec.columns)


def _vendor_units(spec: SensorSpec, layout: "ImuLayout") -> dict[str, str]:
    """Each canonical column's unit: the file's, overridden by the declared ones (keyed by channel or file name)."""
    units = {"t": layout.clock_unit, **dict(zip(layout.channels, layout.units))}
    by_source = dict(zip(layout.sources, layout.channels))
    for key, unit in spec.units.items():
        if key in units:
            units[key] = unit
        elif key in by_source:
            units[by_source[key]] = unit
        elif key in (layout.clock, spec.timestamp):
            units["t"] = unit
        else:
            raise SensorError(spec.name, "sensor_columns", f"units are declared for {key!r}, which this "
                                                           f"{layout.format} export does not have; it has "
                                                           f"{list(layout.sources)}")
    return units


def resolve(spec: SensorSpec) -> SensorSpec:
    """The spec as its file is laid out: a vendor export's layout, canonical channels (t, ax.., gx.., mx..), units
    and rate filled in; declared units, rate and clock offset win. Reads the file's first lines (and, when no rate
    is declared or stated, its first block to measure it). Raises SensorError."""
    from dataclasses import replace

    if spec.layout is not None:
        return spec
    try:
        layout = _vendor_layout(spec)
    except (OSError, UnicodeDecodeError) as e:
        raise SensorError(spec.name, "sensor_unreadable", f"cannot read its first lines ({e})") from e
    if layout is not None:
        spec = replace(spec, columns=("t", *layout.channels), timestamp="t", units=_vendor_units(spec, layout),
                       rate_hz=spec.rate_hz or layout.rate_hz, layout=layout)
        if not spec.rate_hz and layout.clock_kind in ("counter", "packet"):
            raise SensorError(spec.name, "sensor_rate_unknown",
                              f"its rows carry {'a sample counter' if layout.clock_kind == 'counter' else 'no time'}"
                              f" and neither the file nor the contract gives the rate: declare rate_hz"
                              + (" or keep NAME_Registers.csv beside it" if layout.format == "ximu" else ""))
    elif spec.format == "csv" and not spec.columns:
        spec = replace(spec, columns=_header(spec.path))  # none declared: the header's
    if not spec.rate_hz:
        spec = replace(spec, rate_hz=_measured_rate(spec))
    return spec


def _measured_rate(spec: SensorSpec) -> float:
    """Samples per second from the median timestamp step of the file's first block."""
    _, factor = canonical_unit(spec.units.get(spec.timestamp, "s"))
    for t, _, _ in rows(spec):
        steps = np.diff(t[np.isfinite(t)]) * factor
        steps = steps[steps > 0]
        if steps.size:
            return float(1.0 / np.median(steps))
        break
    raise SensorError(spec.name, "sensor_rate_unknown", "too few timestamped rows to measure the rate and none is "
                                                        "declared: declare rate_hz")


def rows(spec: SensorSpec) -> Iterator[tuple[np.ndarray, np.ndarray, int | None]]:
    """(timestamps in the file's unit, channel values in the file's units, file line of the chunk's first row or
    None for .npy) chunks of a resolved spec."""
    if spec.layout is not None:
        from ingest import imu_formats

        for chunk, line in imu_formats.read_chunks(spec.path, spec.name, spec.layout, spec.rate_hz):
            yield chunk[:, 0], chunk[:, 1:], line
        return
    t_index = spec.columns.index(spec.timestamp) if spec.timestamp in spec.columns else -1
    if t_index < 0:
        raise SensorError(spec.name, "sensor_columns", f"timestamp column {spec.timestamp!r} is not among "
                                                       f"{list(spec.columns)}")
    keep = [i for i in range(len(spec.columns)) if i != t_index]
    row = 0
    for chunk in _chunks(spec):
        yield chunk[:, t_index], chunk[:, keep], (row + 2 if spec.format == "csv" else None)
        row += len(chunk)


def read_stream(spec: SensorSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(video-time seconds [n], canonical values [n, c]) chunks; rows with a NaN value are dropped (they become
    gaps). `spec` is resolved first (vendor exports: see ingest.imu_formats).

    Raises SensorError when the file is unreadable, lacks a declared column, or its timestamps do not increase.
    """
    spec = resolve(spec)
    _, t_factor = canonical_unit(spec.units.get(spec.timestamp, "s"))
    factors = np.array([canonical_unit(spec.units.get(c, ""))[1] for c in spec.channels])
    last, row = -math.inf, 0
    for t, values, line in rows(spec):
        finite = np.isfinite(t)
        steps = np.diff(np.concatenate([[last], t[finite]]))
        if (steps <= 0).any():
            bad = row + int(np.flatnonzero(finite)[int(np.argmax(steps <= 0))])
            at = None if line is None else line + bad - row
            raise SensorError(spec.name, "timestamps_not_monotonic",
                              f"timestamps stop increasing at data row {bad + 1}"
                              + ("" if at is None else f" (line {at})") + ": sort the rows and drop repeated samples",
                              at)
        values = values * factors
        good = finite & np.isfinite(values).all(axis=1)
        row += len(t)
        if finite.any():
            last = float(t[finite][-1])
        yield t[good] * t_factor + spec.clock_offset_s, values[good]


def sidecar_spec(csv: Path, video: Path, declared: Mapping[str, Any] | None = None) -> SensorSpec:
    """The spec of a `{video stem}.{stream}.csv` beside a video, from the file's first line: a vendor export's
    format by its header, a plain CSV's columns otherwise. `declared` is that stream's entry of the folder's
    delivery.toml (rate_hz, units, columns, timestamp, clock_offset_s, format), and wins. Bad bytes in the file
    never raise here (they surface as refusals when the stream is read); a declaration that cannot be one raises
    SensorError (sensor_declaration_invalid)."""
    from ingest import imu_formats

    declared = dict(declared or {})
    stream = csv.name[len(video.stem) + 1:-len(csv.suffix)]
    try:
        fmt = str(declared.get("format") or "csv")
        columns = tuple(str(c) for c in declared.get("columns") or ())
        units = {str(k): str(v) for k, v in dict(declared.get("units") or {}).items()}
        rate = None if declared.get("rate_hz") is None else float(declared["rate_hz"])
        offset = float(declared.get("clock_offset_s") or 0.0)
        if fmt not in (*TABLE_FORMATS, *imu_formats.FORMATS) or (rate is not None and not 0 < rate < math.inf):
            raise ValueError(f"format {fmt!r}, rate_hz {rate!r}")
    except (TypeError, ValueError) as e:
        raise SensorError(str(csv), "sensor_declaration_invalid",
                          f"the delivery.toml entry for {stream!r} is not a sensor declaration ({e}): give rate_hz "
                          f"(a positive number), units (a table), columns (a list), format (one of "
                          f"{', '.join((*TABLE_FORMATS, *imu_formats.FORMATS))})") from e
    if fmt == "csv" and not columns:
        try:
            layout = imu_formats.detect(csv, registers=False)
            columns = _header(csv)
        except OSError:
            layout = None
        fmt = layout.format if layout is not None else "csv"
    timestamp = str(declared.get("timestamp") or ("t" if "t" in columns or fmt != "csv" else (columns or ("t",))[0]))
    return SensorSpec(stream=stream, path=str(csv), format=fmt, columns=columns if fmt == "csv" else (), units=units,
                      rate_hz=rate, clock_offset_s=offset, timestamp=timestamp)


def window_slices(spec: SensorSpec, windows: Sequence[tuple[float, float]]) -> Iterator[SensorSlice]:
    """One slice per (t0, t1) window, in order, reading the file once; the memory held is one window's samples.

    A problem with the file gives every window not yet served a slice with `problem` and `detail` set (windows
    served before the problem keep their samples).
    """
    try:
        spec = resolve(spec)
    except SensorError as e:
        for _ in windows:
            yield SensorSlice(spec.stream, spec.channels, (), np.empty(0), np.empty((0, len(spec.channels))),
                              spec.max_gap_s, e.reason, str(e))
        return
    channels = spec.channels
    units = tuple(canonical_unit(spec.units.get(c, ""))[0] for c in channels)
    margin = spec.max_gap_s
    empty_t, empty_v = np.empty(0), np.empty((0, len(channels)))

    def make(t: np.ndarray, v: np.ndarray, problem: str = "", detail: str = "") -> SensorSlice:
        return SensorSlice(spec.stream, channels, units, t, v, spec.max_gap_s, problem, detail)

    served = 0
    buffer_t, buffer_v = empty_t, empty_v
    try:
        for t, v in read_stream(spec):
            buffer_t, buffer_v = np.concatenate([buffer_t, t]), np.concatenate([buffer_v, v])
            while served < len(windows) and buffer_t.size and buffer_t[-1] > windows[served][1] + margin:
                yield _cut(make, buffer_t, buffer_v, windows[served], margin)
                served += 1
                if served < len(windows):
                    keep = buffer_t >= windows[served][0] - margin
                    buffer_t, buffer_v = buffer_t[keep], buffer_v[keep]
    except SensorError as e:
        for _ in windows[served:]:
            yield make(empty_t, empty_v, e.reason, str(e))
        return
    for window in windows[served:]:
        yield _cut(make, buffer_t, buffer_v, window, margin)


def _cut(make, t: np.ndarray, v: np.ndarray, window: tuple[float, float], margin: float) -> SensorSlice:
    inside = (t >= window[0] - margin) & (t <= window[1] + margin)
    return make(t[inside].copy(), v[inside].copy())


# --------------------------------------------------------------------------- resampling


def resample(samples: SensorSlice, frame_times: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(float32 [frames, channels] or None, status): linear interpolation at the frame times.

    status is "ok", "sensor_gap" (a frame falls where samples are further apart than max_gap_s, or outside them:
    no data is invented), or the slice's problem.
    """
    if samples.problem:
        return None, "sensor_invalid"
    t = samples.times
    if t.size < 2:
        return None, "sensor_gap"
    right = np.clip(np.searchsorted(t, frame_times), 1, t.size - 1)
    span = t[right] - t[right - 1]
    tolerance = 1e-6
    outside = (frame_times < t[0] - tolerance) | (frame_times > t[-1] + tolerance)
    if outside.any() or (span > samples.max_gap_s + tolerance).any():
        return None, "sensor_gap"
    out = np.empty((frame_times.size, samples.values.shape[1]), np.float32)
    for c in range(samples.values.shape[1]):
        out[:, c] = np.interp(frame_times, t, samples.values[:, c])
    return out, "ok"


def imu_stats(channels: Iterable[str], units: Iterable[str], values: np.ndarray) -> tuple[float | None, float | None]:
    """(gyro RMS magnitude in rad/s, std of the accelerometer magnitude in m/s^2), None where absent."""
    channels, units = list(channels), list(units)
    gyro = [i for i, (c, u) in enumerate(zip(channels, units)) if u == "rad/s" or (not u and c.lower().startswith("g"))]
    accel = [i for i, (c, u) in enumerate(zip(channels, units))
             if u == "m/s^2" or (not u and c.lower().startswith("a"))]
    gyro_rms = float(np.sqrt(np.mean(np.sum(values[:, gyro] ** 2, axis=1)))) if len(gyro) >= 1 and values.size else None
    accel_std = float(np.std(np.linalg.norm(values[:, accel], axis=1))) if len(accel) >= 1 and values.size else None
    return gyro_rms, accel_std

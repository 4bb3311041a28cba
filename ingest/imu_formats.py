"""IMU vendor exports: recognise a file's layout from its first lines, and stream it as clock + canonical channels.

The layouts, as the vendors' own software writes them (and where each was checked):

- Xsens MT Manager "Export ASCII" (.txt): `//` comment lines, then a tab-separated header. One comment gives the
  rate: `// Update Rate: 100.0Hz` (MT Manager 4.x and later) or `// Sample rate: 50.0Hz` (older suites). The
  sample counter is `PacketCounter` (`Counter` in older exports; 16 bits, wraps at 65536); `SampleTimeFine` is
  the device clock in 10 kHz ticks (32 bits, wraps); rows may end with a stray tab and hold `NaN` for data the
  device did not send (MT Manager 2022 writes `NaN` under SampleTimeFine when it was not recorded). `Acc_X..Z`
  m/s^2, `Gyr_X..Z` rad/s, `Mag_X..Z` in a.u. (normalised to the field at calibration: no SI unit exists).
  Checked against the exports in the scikit-kinematics wheel (tests/data/data_xsens*.txt) and an MT Manager
  2022 export quoted in a public repository.
- x-IMU GUI / x-IMU API (the original x-IMU), `NAME_CalInertialAndMag.csv`: `Packet number,Gyroscope X (deg/s),
  ...,Accelerometer X (g),...,Magnetometer X (G)` (G is gauss). The packet number counts every packet type the
  API decoded, so steps of 1-3 between rows are the other packets in between, not lost samples; rows carry no
  time, so sample k is at k / rate (x-io's MATLAB and Python importers do the same). The rate sits in
  `NAME_Registers.csv` (`Packet number,Address,Value,Fixed-point value,Name`): register 69,
  `InertialAndMagneticDataRate`, value v means 2**(v - 1) Hz (0: disabled). Source: x-IMU API CSVfileWriter.cs
  and xIMUdataClass (x-io Technologies); scikit-kinematics tests/data/data_xio.
- NGIMU GUI, `sensors.csv`: `Time (s),Gyroscope X (deg/s),...,Accelerometer X (g),...,Magnetometer X (uT),...,
  Barometer (hPa)`. Source: NGIMU GUI CSV headers; scikit-kinematics tests/data/data_ngimu/sensors.csv.
- x-IMU3 GUI, `Inertial.csv`: `Timestamp (us),Gyroscope X (deg/s),...,Accelerometer X (g),...`. Source:
  xioTechnologies/x-IMU3-CSV "Examples/Logged Data"; scikit-kinematics tests/data/data_xio3.
- YEI (Yost Labs) 3-Space data-logging export: a first line `# Data format: "%int(ChipTimeUS),%float(RawGyroX),
  ...,%float(RawCompassX),...,%float(RawAccelX),..."` naming each comma-separated field, then the rows. We found
  no published specification of this file; the layout is the one of the export in scikit-kinematics
  (tests/data/data_yei.txt) and of its reader. ChipTimeUS is the sensor clock in microseconds. Units follow the
  3-Space manual's normalised/corrected data as that export shows them (gyro rad/s, accelerometer g with
  gravity at 1.0, compass gauss at about 0.5): declare units in the contract where a sensor is set otherwise.

Device clocks start anywhere (boot, power-on), so a vendor file's time counts from its first sample; the
contract's clock_offset_s places that sample on the video's clock.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ingest.sensors import SensorError  # sensors imports this module lazily, so no cycle

FORMATS = ("xsens", "ximu", "ngimu", "ximu3", "yei")
CHANNELS = ("ax", "ay", "az", "gx", "gy", "gz", "mx", "my", "mz")
NULLS = ("", "nan", "NaN", "NAN", "NA", "null")
HEAD_BYTES = 256 << 10  # detection reads at most this much of a file
HEAD_LINES = 64
XSENS_TICK_S = 1e-4  # SampleTimeFine counts 10 kHz ticks
XSENS_COUNTER_WRAP = 1 << 16
XSENS_TICKS_WRAP = 1 << 32
XIMU_RATE_REGISTER = 69  # InertialAndMagneticDataRate


@dataclass(frozen=True)
class ImuLayout:
    """How one vendor file is laid out: its fields, where data starts, which column is which channel and clock."""

    format: str  # one of FORMATS
    delimiter: str
    names: tuple[str, ...]  # every field of a data row, unique
    first_data_line: int  # 1-based line number of the first data row
    channels: tuple[str, ...]  # canonical channel names (CHANNELS order)
    sources: tuple[str, ...]  # the file column of each channel
    units: tuple[str, ...]  # each channel's unit as the file gives it, in canonical_unit spelling
    clock: str  # the column holding time, ticks or a counter; "" when rows carry none (sample k at k / rate)
    clock_kind: str  # "time" (clock_unit), "ticks" (SampleTimeFine), "counter" (wraps), "packet" (increases)
    clock_unit: str = "s"  # unit of the time the reader yields
    rate_hz: float | None = None  # the rate the file, or the registers file beside it, states


# --------------------------------------------------------------------------- detection


def _head(path: Path) -> list[str]:
    with open(path, "rb") as f:
        raw = f.read(HEAD_BYTES)
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if len(raw) == HEAD_BYTES:
        lines = lines[:-1]  # the last one may be cut
    return lines[:HEAD_LINES]


def _unique(names: list[str]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    out = []
    for index, name in enumerate(names):
        name = name.strip() or f"_field{index}"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return tuple(out)


def _fields(header: str, data: str | None, delimiter: str) -> tuple[str, ...]:
    """Header names, plus a name for the empty field a stray trailing delimiter leaves on every data row."""
    names = header.split(delimiter)
    if names and not names[-1].strip():
        names = names[:-1]
    if data is not None:
        extra = data.split(delimiter)[len(names):]
        if extra and all(not field.strip() for field in extra):
            names += [""] * len(extra)
    return _unique(names)


def _ordered(found: dict[str, tuple[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    channels = tuple(c for c in CHANNELS if c in found)
    return channels, tuple(found[c][0] for c in channels), tuple(found[c][1] for c in channels)


_XIO_COLUMN = re.compile(r"(Gyroscope|Accelerometer|Magnetometer) ([XYZ]) \(([^)]*)\)")
_XIO_KIND = {"Gyroscope": "g", "Accelerometer": "a", "Magnetometer": "m"}


def _xio_unit(kind: str, unit: str) -> str:
    unit = unit.strip()
    return "gauss" if kind == "m" and unit == "G" else unit  # "G" is gauss on a magnetometer, never g


def _xio_layout(path: Path, lines: list[str], registers: bool) -> ImuLayout | None:
    """x-IMU, NGIMU and x-IMU3: one comma-separated header whose names carry their units in parentheses."""
    names = _fields(lines[0], lines[1] if len(lines) > 1 else None, ",")
    found = {}
    for name in names:
        match = _XIO_COLUMN.fullmatch(name)
        if match:
            kind = _XIO_KIND[match[1]]
            found[kind + match[2].lower()] = (name, _xio_unit(kind, match[3]))
    if not any(c in found for c in ("gx", "ax")):
        return None  # e.g. x-IMU3 Magnetometer.csv or NGIMU quaternion.csv: not an inertial file
    channels, sources, units = _ordered(found)
    first = names[0]
    if first == "Time (s)":
        return ImuLayout("ngimu", ",", names, 2, channels, sources, units, first, "time", "s")
    if first == "Timestamp (us)":
        return ImuLayout("ximu3", ",", names, 2, channels, sources, units, first, "time", "us")
    if first.lower() == "packet number":
        return ImuLayout("ximu", ",", names, 2, channels, sources, units, first, "packet", "s",
                         _ximu_rate(path) if registers else None)
    return None


def _ximu_registers(path: Path) -> list[Path]:
    """Where the x-IMU GUI puts the registers of `NAME_CalInertialAndMag.csv`, and the sidecar spelling."""
    name = path.name
    candidates = []
    if name.endswith("_CalInertialAndMag.csv"):
        candidates.append(path.with_name(name[: -len("_CalInertialAndMag.csv")] + "_Registers.csv"))
    candidates.append(path.with_name(path.stem + "_Registers.csv"))
    return candidates


def _ximu_rate(path: Path) -> float | None:
    """The inertial/magnetic data rate from the registers file beside the data, or None when there is none."""
    for registers in _ximu_registers(path):
        if not registers.is_file():
            continue
        with open(registers, encoding="utf-8", errors="replace", newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if len(row) < 3 or line == 1:
                    continue
                if row[1].strip() == str(XIMU_RATE_REGISTER) or row[-1].strip() == "InertialAndMagneticDataRate":
                    try:
                        value = int(float(row[2]))
                    except ValueError as e:
                        raise SensorError(str(registers), "sensor_unreadable",
                                          f"line {line}: InertialAndMagneticDataRate is {row[2]!r}, not a "
                                          f"register value") from e
                    if value <= 0:
                        raise SensorError(str(registers), "sensor_rate_unknown",
                                          f"line {line}: InertialAndMagneticDataRate is {value} (disabled): the "
                                          f"device sent no inertial data; declare rate_hz if it did")
                    return float(2 ** (value - 1))
    return None


_XSENS_RATE = re.compile(r"(?:update|sample)\s+rate\s*:\s*([0-9.]+)\s*hz", re.IGNORECASE)
_XSENS_KIND = {"Acc": "a", "Gyr": "g", "Mag": "m"}
_XSENS_UNITS = {"a": "m/s^2", "g": "rad/s", "m": "a.u."}


def _xsens_layout(lines: list[str]) -> ImuLayout | None:
    comments = 0
    while comments < len(lines) and lines[comments].lstrip().startswith("//"):
        comments += 1
    if comments >= len(lines):
        return None
    header = lines[comments]
    delimiter = max("\t;,", key=header.count)
    data = lines[comments + 1] if comments + 1 < len(lines) else None
    names = _fields(header, data, delimiter)
    found = {}
    for name in names:
        match = re.fullmatch(r"(Acc|Gyr|Mag)_([XYZ])", name)
        if match:
            kind = _XSENS_KIND[match[1]]
            found[kind + match[2].lower()] = (name, _XSENS_UNITS[kind])
    counter = next((n for n in ("PacketCounter", "Counter") if n in names), "")
    if not any(c in found for c in ("gx", "ax")) or not (counter or "SampleTimeFine" in names):
        return None
    rate = None
    for line in lines[:comments]:
        match = _XSENS_RATE.search(line)
        if match:
            rate = float(match[1])
    channels, sources, units = _ordered(found)
    first_data_line = comments + 2
    if "SampleTimeFine" in names and data is not None and _number(data.split(delimiter), names,
                                                                  "SampleTimeFine") is not None:
        return ImuLayout("xsens", delimiter, names, first_data_line, channels, sources, units, "SampleTimeFine",
                         "ticks", "s", rate)
    return ImuLayout("xsens", delimiter, names, first_data_line, channels, sources, units, counter, "counter", "s",
                     rate)


def _number(fields: list[str], names: tuple[str, ...], column: str) -> float | None:
    index = names.index(column)
    try:
        value = float(fields[index]) if index < len(fields) else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_YEI_FORMAT = re.compile(r'#\s*Data format:\s*"([^"]*)"', re.IGNORECASE)
_YEI_COLUMN = re.compile(r"(Corrected|Normalized|Raw)?(Gyro|Accel|Compass)(?:Rate)?([XYZ])")
_YEI_KIND = {"Gyro": "g", "Accel": "a", "Compass": "m"}
_YEI_UNITS = {"g": "rad/s", "a": "g", "m": "gauss"}
_YEI_PREFERENCE = ("Corrected", "Normalized", "", "Raw")


def _yei_layout(lines: list[str]) -> ImuLayout | None:
    match = _YEI_FORMAT.search(lines[0])
    if not match:
        return None
    names = _unique(re.findall(r"%\w+\((\w+)\)", match[1]))
    found: dict[str, tuple[str, str]] = {}
    rank: dict[str, int] = {}
    for name in names:
        column = _YEI_COLUMN.fullmatch(name)
        if column:
            kind = _YEI_KIND[column[2]]
            channel, preference = kind + column[3].lower(), _YEI_PREFERENCE.index(column[1] or "")
            if preference < rank.get(channel, len(_YEI_PREFERENCE)):
                found[channel], rank[channel] = (name, _YEI_UNITS[kind]), preference
    if not any(c in found for c in ("gx", "ax")):
        return None
    channels, sources, units = _ordered(found)
    clock = "ChipTimeUS" if "ChipTimeUS" in names else ""
    return ImuLayout("yei", ",", names, 2, channels, sources, units, clock, "time" if clock else "packet", "us"
                     if clock else "s")


def detect(path: str | Path, registers: bool = True) -> ImuLayout | None:
    """The vendor layout of a sensor file, from its first lines; None when it is none we know (plain CSV, .npy).

    `registers=False` leaves an x-IMU file's rate unread (its registers file may itself be broken); SensorError
    comes only from a registers file that is."""
    path = Path(path)
    lines = _head(path)
    if not lines:
        return None
    return _yei_layout(lines) or _xsens_layout(lines) or _xio_layout(path, lines, registers)


def layout_for(path: str | Path, name: str, declared: str) -> ImuLayout:
    """The file's layout when its contract names a vendor format; SensorError when the file is not that format."""
    layout = detect(path)
    if layout is None or layout.format != declared:
        found = "no vendor layout we know" if layout is None else f"a {layout.format} export"
        head = _head(Path(path))[:1]
        raise SensorError(name, "sensor_columns", f"line 1: declared {declared} but the file is {found} "
                                                  f"(it starts {head[0][:120] if head else '(empty)'!r})")
    return layout


def header_format(columns: list[str] | tuple[str, ...]) -> str | None:
    """The vendor format whose CSV header these column names are (as a manifest builder splits a first line)."""
    names = [c.strip() for c in columns]
    if not names:
        return None
    if not any(_XIO_COLUMN.fullmatch(n) for n in names):
        return None
    return {"time (s)": "ngimu", "timestamp (us)": "ximu3", "packet number": "ximu"}.get(names[0].lower())


# --------------------------------------------------------------------------- reading


class _Clock:
    """Turns each chunk's clock column into time from the first sample, keeping the state a wrap needs."""

    def __init__(self, layout: ImuLayout, rate_hz: float | None, name: str):
        self.layout, self.rate_hz, self.name = layout, rate_hz, name
        self.first: float | None = None
        self.last: float | None = None  # the previous chunk's last raw value
        self.total = 0.0  # ... and its unwrapped value
        self.rows = 0

    def _missing(self, raw: np.ndarray, line: int) -> None:
        bad = ~np.isfinite(raw)
        if bad.any():
            raise SensorError(self.name, "timestamp_missing",
                              f"line {line + int(np.argmax(bad))}: {self.layout.clock!r} is empty or NaN: every "
                              f"row needs its {self.layout.clock_kind}", line + int(np.argmax(bad)))

    def _unwrapped(self, raw: np.ndarray, line: int, wrap: int) -> np.ndarray:
        steps = np.diff(raw, prepend=raw[0] if self.last is None else self.last)
        steps[steps < -wrap / 2] += wrap  # a counter that rolled over, not one that went back
        check = steps[1:] if self.last is None else steps
        if (check <= 0).any():
            bad = int(np.argmax(check <= 0)) + (1 if self.last is None else 0)
            raise SensorError(self.name, "timestamps_not_monotonic",
                              f"line {line + bad}: {self.layout.clock!r} goes from "
                              f"{raw[bad - 1] if bad else self.last:.0f} to {raw[bad]:.0f}: rows repeat or are out "
                              f"of order", line + bad)
        unwrapped = (raw[0] if self.last is None else self.total) + np.cumsum(steps)
        self.last, self.total = float(raw[-1]), float(unwrapped[-1])
        return unwrapped

    def times(self, raw: np.ndarray | None, rows: int, line: int) -> np.ndarray:
        """Time of each row of a chunk whose first row is on file line `line`, in the layout's clock unit."""
        kind = self.layout.clock_kind
        if kind in ("counter", "packet") and not self.rate_hz:
            raise SensorError(self.name, "sensor_rate_unknown",
                              f"its rows carry {'a sample counter' if kind == 'counter' else 'no time'} and no "
                              f"rate is known: declare rate_hz" + (" or keep NAME_Registers.csv beside it"
                                                                   if self.layout.format == "ximu" else ""))
        if raw is not None:
            self._missing(raw, line)
        if kind == "time":
            if self.first is None:
                self.first = float(raw[0])
            return raw - self.first
        if kind == "ticks":
            ticks = self._unwrapped(raw, line, XSENS_TICKS_WRAP)
            self.first = ticks[0] if self.first is None else self.first
            return (ticks - self.first) * XSENS_TICK_S
        if kind == "counter":
            count = self._unwrapped(raw, line, XSENS_COUNTER_WRAP)
            self.first = count[0] if self.first is None else self.first
            return (count - self.first) / self.rate_hz
        if raw is not None:  # x-IMU packet numbers only have to increase; they are not time
            self._unwrapped(raw, line, 1 << 62)
        index = self.rows + np.arange(rows)
        self.rows += rows
        return index / self.rate_hz


def read_chunks(path: str | Path, name: str, layout: ImuLayout, rate_hz: float | None,
                block_size: int = 1 << 20) -> Iterator[tuple[np.ndarray, int]]:
    """([rows, 1 + channels] float64: time from the first sample in layout.clock_unit, then the channels in the
    file's units; the file line of the chunk's first row), streamed a block at a time.

    Raises SensorError naming the file, the line and a reason: an unparseable number or a short row
    (sensor_unreadable), a missing or NaN clock (timestamp_missing), a clock that goes back
    (timestamps_not_monotonic), no rate for a counter (sensor_rate_unknown).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    wanted = list(dict.fromkeys(([layout.clock] if layout.clock else []) + list(layout.sources)))
    clock = _Clock(layout, rate_hz, name)
    line = layout.first_data_line
    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(skip_rows=layout.first_data_line - 1, column_names=list(layout.names),
                                                 block_size=block_size),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=wanted, null_values=list(NULLS),
                                                 column_types={c: pa.float64() for c in wanted}))
        for batch in reader:
            table = {c: batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in wanted}
            rows = batch.num_rows
            t = clock.times(table[layout.clock] if layout.clock else None, rows, line)
            values = [table[c] for c in layout.sources]
            yield np.stack([t, *values], axis=1), line
            line += rows
    except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, SensorError):
            raise
        where = bad_line(path, layout, wanted)
        detail = f"line {where[0]}: {where[1]}" if where else f"cannot read it as a {layout.format} export ({e})"
        raise SensorError(name, "sensor_unreadable", detail + ": fix or re-export the file",
                          where[0] if where else None) from e


def bad_line(path: str | Path, layout: ImuLayout, wanted: list[str]) -> tuple[int, str] | None:
    """The first data line (1-based) with a wrong field count or a value that is not a number, and what is wrong."""
    index = [layout.names.index(c) for c in wanted]
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line, text in enumerate(f, start=1):
            if line < layout.first_data_line or not text.strip():
                continue
            fields = text.rstrip("\r\n").split(layout.delimiter)
            if len(fields) != len(layout.names):
                return line, f"{len(fields)} fields, the header names {len(layout.names)} (a cut or joined row)"
            for i in index:
                token = fields[i].strip()
                if token in NULLS:
                    continue
                try:
                    float(token)
                except ValueError:
                    return line, f"{layout.names[i]!r} is {token[:40]!r}, not a number"
    return None

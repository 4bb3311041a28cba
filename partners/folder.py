"""The partner's folder: the delivery metadata, the manifest built from the folder (hashes cached), the local check."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alliance.store import CHUNK
from partners import localfs
from partners.contract import (Consent, ContractBounds, DeliveryManifest, Device, RecordingEntry, SensorFile,
                               validation_refusal)
from partners.errors import ContractError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)
PART_SIZE = 8 << 20  # the service's default; a service cutting other parts says so and the client follows


METADATA_FILES = ("delivery.toml", "delivery.json")
SENSOR_SUFFIXES = ("csv", "npy", "txt")
HASH_CACHE = ".alliance-hashes.json"
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo", ".ts": "video/mp2t"}


class SensorDefaults(BaseModel):
    """How the sensor files of one stream look; files are found as `{video stem}.{stream}.csv|npy|txt` beside each
    video. A vendor export (Xsens MT Manager or YEI 3-Space .txt, x-IMU/NGIMU/x-IMU3 .csv) is recognised by its
    header, or declared with `format`; it carries its own columns and units, and often its rate."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["csv", "npy", "xsens", "ximu", "ngimu", "ximu3", "yei"] | None = None  # default: from the file
    rate_hz: float | None = Field(None, gt=0)  # required for plain CSV and .npy tables
    columns: list[str] | None = None  # CSV: read from the header when omitted; NPY: required
    units: dict[str, str] = Field(default_factory=dict)
    timestamp: str = "t"
    clock_offset_s: float = 0.0


class RecordingOverride(BaseModel):
    """Per-recording facts that differ from the folder's defaults."""

    model_config = ConfigDict(extra="forbid")
    start_time: datetime | None = None
    duration_s: float | None = None
    device: Device | None = None


class DeliveryMetadata(BaseModel):
    """The small file a partner writes once per folder (delivery.toml): license, consent, device, sensor streams."""

    model_config = ConfigDict(extra="forbid")
    partner: str | None = None  # taken from the token when omitted
    delivery: str | None = None  # default: the folder's name plus a hash of its contents
    license: str
    consent: Consent
    device: Device
    sensors: dict[str, SensorDefaults] = Field(default_factory=dict)
    recordings: dict[str, RecordingOverride] = Field(default_factory=dict)
    notes: str = ""


def load_metadata(folder: str | Path) -> DeliveryMetadata:
    """The folder's delivery.toml (or delivery.json); a missing or invalid one is a clear refusal. The file is
    opened without following links: a delivery.toml that links elsewhere is refused, never read."""
    folder = Path(folder)
    for name in METADATA_FILES:
        if not os.path.lexists(folder / name):
            continue
        try:
            text = localfs.read_bytes(folder, name, 0, 1 << 20).decode("utf-8")
            data = tomllib.loads(text) if name.endswith(".toml") else json.loads(text)
        except (ValueError, RecursionError) as e:  # bad syntax or encoding, or tables nested thousands deep
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:300]
            raise ContractError("metadata_invalid", f"{folder / name}: not valid {name.rsplit('.', 1)[1].upper()}: "
                                f"{why}: fix the file (see docs/partners.md for an example)") from None
        if not isinstance(data, dict):
            raise ContractError("metadata_invalid", f"{folder / name}: expected a table of settings")
        try:
            return DeliveryMetadata.model_validate(data)
        except ValidationError as e:
            raise validation_refusal(str(folder / name), e, "metadata_invalid") from None
    raise ContractError("metadata_missing", f"{folder}: no delivery.toml: write one with license, [consent] "
                        "(scope, expires, faces_allowed), [device] (kind, model, mounting) and [sensors.imu] "
                        "(rate_hz) if there are IMU files; see `alliance deliver --help`")


# --------------------------------------------------------------------------- the folder


def progress_bar(enabled: bool):
    """A byte progress bar (rich), or a silent one."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def cache_stamp(stat: os.stat_result) -> list[int]:
    """What says a file is unchanged since it was hashed (the client checks it again as it reads each part)."""
    # ctime and inode too: `touch -m` can put an mtime back, but not a ctime
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _hashes(folder: Path, files: dict[str, os.stat_result], paths: list[str], progress: bool,
            trust_cache: bool = True) -> dict[str, tuple[int, str]]:
    """(bytes, sha256) per file, streamed; with trust_cache, files whose size, mtime, ctime and inode match the
    folder's .alliance-hashes.json are not read again."""
    try:
        cache = json.loads(localfs.read_bytes(folder, HASH_CACHE)) if trust_cache else {}
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError, ContractError):
        cache = {}
    result: dict[str, tuple[int, str]] = {}
    todo = []
    for path in paths:
        stat = files[path]
        cached = cache.get(path)
        if isinstance(cached, list) and len(cached) == 5 and cached[:4] == cache_stamp(stat):
            result[path] = (stat.st_size, cached[4])
        else:
            todo.append((path, stat))
    with progress_bar(progress and bool(todo)) as bar:
        task = bar.add_task("hashing", total=sum(s.st_size for _, s in todo))
        for path, stat in todo:
            digest, size, parts = hashlib.sha256(), 0, PartDigests(PART_SIZE)
            with localfs.open_read(folder, path) as f:
                current = os.fstat(f.fileno())
                while chunk := f.read(CHUNK):  # CHUNK divides PART_SIZE: a chunk never straddles two parts
                    digest.update(chunk)
                    parts.update(chunk)
                    size += len(chunk)
                    bar.advance(task, len(chunk))
            result[path] = (size, digest.hexdigest())
            _PART_SUMS[(str(folder), path, PART_SIZE, *cache_stamp(current))] = parts.sums()
            cache[path] = [*cache_stamp(current), result[path][1]]
    if todo:
        try:
            localfs.write_bytes(folder, HASH_CACHE, json.dumps(cache).encode())
        except (OSError, ContractError) as e:  # a read-only folder only loses the cache, never the delivery
            log.info("could not write the hash cache %s: %s", folder / HASH_CACHE, e)
    return result


def _first_line(folder: Path, path: str) -> list[str]:
    line = localfs.read_bytes(folder, path, 0, 64 << 10).split(b"\n", 1)[0]
    return [c.strip() for c in line.decode("utf-8", errors="replace").strip().split(",")]


def _sensor_entry(folder: Path, stream: str, path: str, suffix: str, spec: SensorDefaults,
                  hashed: tuple[int, str]) -> SensorFile:
    """The manifest entry of one sensor file: a declared format wins; else .npy is a table, and a .csv or .txt is
    a vendor export when its first lines say so (read with ingest's detector), else a plain CSV table."""
    from ingest.imu_formats import detect
    from ingest.sensors import SensorError

    fmt, columns = spec.format, spec.columns
    if fmt is None:
        fmt = "npy" if suffix == "npy" else "csv"
        if fmt == "csv" and not columns:
            try:
                with localfs.open_read(folder, path):  # refuses a link planted since the scan
                    pass
                layout = detect(folder / path, registers=False)
            except (OSError, SensorError, ValueError):
                layout = None
            if layout is not None:
                fmt = layout.format
    if fmt == "csv" and not columns:
        columns = _first_line(folder, path)
    try:
        return SensorFile(stream=stream, path=path, sha256=hashed[1], bytes=hashed[0], format=fmt,
                          columns=columns or [], units=spec.units,
                          rate_hz=spec.rate_hz, clock_offset_s=spec.clock_offset_s, timestamp=spec.timestamp)
    except ValidationError as e:
        raise validation_refusal(f"{path} (stream {stream!r} of delivery.toml)", e, "metadata_invalid") from None


def build_manifest(folder: str | Path, metadata: DeliveryMetadata, partner: str, progress: bool = False,
                   trust_cache: bool = True) -> DeliveryManifest:
    """The manifest of every video in the folder (recursively) and its declared sensor files.

    Nothing outside the folder is read: the folder is scanned with lstat, every file is opened with O_NOFOLLOW,
    and a symbolic link anywhere in it is refused as `symlink` (with how to fix it)."""
    folder = Path(folder).resolve()
    scan = localfs.scan(folder)
    if scan.refused:
        first = scan.refused[0]
        more = f" (and {len(scan.refused) - 1} more)" if len(scan.refused) > 1 else ""
        raise ContractError(first["reason"], f"{first['detail']}{more}: {first['fix']}", scan.refused)
    videos = sorted(p for p in scan.files if Path(p).suffix.lower() in VIDEO_TYPES)
    if not videos:
        raise ContractError("no_recordings", f"{folder}: no video files ({', '.join(sorted(VIDEO_TYPES))})")
    unknown = sorted(name for name in metadata.recordings if name not in scan.files or name not in videos)
    if unknown:
        raise ContractError("unknown_recording_entry", f"delivery.toml: [recordings.{unknown[0]!r}] names no video "
                            f"in {folder}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}: give the "
                            "video's path relative to the folder (e.g. \"walk-01.mp4\"), or remove the entry",
                            [{"reason": "unknown_recording_entry", "path": name, "detail": f"{name}: no such video"}
                             for name in unknown])
    sensor_paths: dict[str, list[tuple[str, str, str]]] = {}
    for video in videos:
        stem = video[: -len(Path(video).suffix)]
        found = []
        for stream in sorted(metadata.sensors):
            suffixes = [s for s in SENSOR_SUFFIXES if f"{stem}.{stream}.{s}" in scan.files]
            if len(suffixes) > 1:
                raise ContractError("duplicate_entry", f"{stem}.{stream}: several files ({', '.join(suffixes)}) for "
                                    "one stream of one video: keep one")
            found += [(stream, f"{stem}.{stream}.{s}", s) for s in suffixes]
        sensor_paths[video] = found
    all_paths = videos + [p for found in sensor_paths.values() for _, p, _ in found]
    hashes = _hashes(folder, scan.files, all_paths, progress, trust_cache)
    recordings = []
    for video in videos:
        override = metadata.recordings.get(video, RecordingOverride())
        mtime = datetime.fromtimestamp(scan.files[video].st_mtime, timezone.utc)
        sensors = [_sensor_entry(folder, stream, path, suffix, metadata.sensors[stream], hashes[path])
                   for stream, path, suffix in sensor_paths[video]]
        try:
            recordings.append(RecordingEntry(
                path=video, sha256=hashes[video][1], bytes=hashes[video][0],
                media_type=VIDEO_TYPES[Path(video).suffix.lower()], device=override.device or metadata.device,
                start_time=override.start_time or mtime, duration_s=override.duration_s, sensors=sensors))
        except ValidationError as e:
            raise validation_refusal(video, e, "metadata_invalid") from None
    content = hashlib.sha256("\n".join(f"{p} {hashes[p][1]}" for p in all_paths).encode()).hexdigest()
    name = metadata.delivery or f"{_slug(folder.name)}-{content[:10]}"
    try:
        return DeliveryManifest(partner=metadata.partner or partner, delivery=name, license=metadata.license,
                                consent=metadata.consent, recordings=recordings, notes=metadata.notes)
    except ValidationError as e:
        raise validation_refusal("delivery.toml", e, "metadata_invalid") from None


def _slug(text: str) -> str:
    import re

    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:48]
    return slug or "delivery"


def check(folder: str | Path, *, metadata: DeliveryMetadata | None = None, partner: str = "local",
          bounds: ContractBounds = ContractBounds(), progress: bool = False, trust_cache: bool = False):
    """`alliance deliver --check`: the same checks the service runs, on the local folder, before any upload.

    Every file is hashed again unless trust_cache: a check must judge the bytes as they are now."""
    from partners.validate import assess, folder_locator

    metadata = metadata or load_metadata(folder)
    manifest = build_manifest(folder, metadata, partner, progress, trust_cache)
    hashes = {f.path: (f.bytes, f.sha256) for f in manifest.files()}
    return manifest, assess(manifest, folder_locator(folder, hashes), bounds)


class PartDigests:
    """SHA-256 of each part_size slice of a stream fed in chunks that divide part_size."""

    def __init__(self, part_size: int):
        self.part_size, self.done, self.digest, self.filled = part_size, [], hashlib.sha256(), 0

    def update(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.filled += len(chunk)
        if self.filled >= self.part_size:
            self.done.append(base64.b64encode(self.digest.digest()).decode())
            self.digest, self.filled = hashlib.sha256(), 0

    def sums(self) -> list[str]:
        """Base64, as S3's x-amz-checksum-sha256 writes it; an empty file is one empty part."""
        tail = [base64.b64encode(self.digest.digest()).decode()] if self.filled or not self.done else []
        return self.done + tail


# part checksums computed in the same pass as the manifest's hashes, keyed on the file's stamp as the hash cache
_PART_SUMS: dict[tuple, list[str]] = {}


def part_checksums(folder: Path, path: str, part_size: int) -> list[str]:
    """Base64 SHA-256 of each part_size slice of the file: from the manifest's hashing pass when the file has not
    changed since (same size, mtime, ctime, inode), else read again."""
    with localfs.open_read(folder, path) as f:
        stamp = cache_stamp(os.fstat(f.fileno()))
        known = _PART_SUMS.pop((str(folder), path, part_size, *stamp), None)
        if known is not None:
            return known
        parts = PartDigests(part_size)
        while chunk := f.read(math.gcd(CHUNK, part_size)):
            parts.update(chunk)
        return parts.sums()

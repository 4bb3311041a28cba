"""Where recordings come from: a local folder (never through a link), a store prefix or the catalog; every file
ends as a recording to ingest or a rejection, and file names of any bytes are carried as printable text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
import tomllib
from typing import Any, Iterator, Mapping, Sequence

from alliance.errors import AllianceError, InvalidKey, KeyNotFound
from alliance.settings import Settings
from alliance.store import ObjectStore, validate_key
from alliance.tables import Rejection
from ingest.sensors import SensorError, SensorSpec, sidecar_spec
from pipelines.sinks import safe_text

SENSOR_SUFFIXES = (".csv", ".txt")  # sensor sidecars: CSV, and the text exports of Xsens MT Manager and YEI

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts")

MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo", ".ts": "video/mp2t", ".mts": "video/mp2t"}


class IngestInputError(AllianceError):
    """A source that names no recording, or one the launcher cannot read."""


_ESCAPE = re.compile(r"\\\\|\\x[0-9a-f]{2}")


def printable_path(path: str | os.PathLike) -> str:
    """How tables, messages, logs and the catalog name a local file: printable, and lossless (path_of undoes it).

    The name's bytes (os.fsencode) are read as UTF-8; a byte that is not UTF-8, and each byte of a character that
    does not print (control, format, separator), is written \\xNN, and a backslash \\\\. A printable UTF-8 name
    stays as it is ("café.mp4"); the Latin-1 bytes b"caf\\xe9.mp4" become the text caf\\xe9.mp4."""
    out = []
    for char in os.fsencode(path).decode("utf-8", "surrogateescape"):
        if "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xdc00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif not char.isprintable():
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)


def path_of(printable: str) -> str:
    """The local path, as os.fsdecode gives it (any bytes), that printable_path wrote as `printable`."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(printable):
        raw += printable[position:match.start()].encode()
        raw += b"\\" if match.group() == "\\\\" else bytes([int(match.group()[2:], 16)])
        position = match.end()
    raw += printable[position:].encode()
    return os.fsdecode(bytes(raw))


@dataclass(frozen=True)
class RecordingRef:
    """A recording to ingest: where its bytes are (a store key, or a local path) and what the contract says."""

    source: str  # a store key, or a local path in printable_path form: every table, message and the catalog use it
    local: bool  # True: `source` and the sensor paths are local files; False: store keys
    partner: str
    delivery: str
    recording_id: str = ""  # sha256; computed by the pipeline when empty
    sensors: tuple[SensorSpec, ...] = ()
    meta_json: str = "{}"
    bytes: int = 0  # size of the recording, to size the clip table's parts

    @property
    def location(self) -> str:
        """What to open: the local path with its original bytes, or the store key."""
        return path_of(self.source) if self.local else self.source

    @property
    def progress_key(self) -> str:
        """Names this ref in progress objects: two refs with the same bytes (one recording id) stay two."""
        return hashlib.sha1(self.source.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sources:
    """What a source holds: the recordings to ingest, and what the launcher refused before reading any bytes."""

    refs: tuple[RecordingRef, ...]
    refused: tuple[Rejection, ...] = ()  # entries that could be recordings (links, fifos, ...): each counts as one in
    side_refused: tuple[Rejection, ...] = ()  # files beside the recordings (sensor sidecars, delivery.toml)


def scan_folder(folder: Path) -> Iterator[tuple[str, Path, str]]:
    """(kind, path, why) for every entry under folder, depth first in name order, never through a link.

    kind: "file" (regular), "link" (a symbolic link, whatever it points to), "other" (fifo, socket, device) or
    "unreadable" (a sub-folder that cannot be listed; why says so). Nothing is opened but the folders."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as e:
        yield "unreadable", folder, e.strerror or str(e)
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            yield "link", path, ""
        elif entry.is_dir(follow_symlinks=False):
            yield from scan_folder(path)
        elif entry.is_file(follow_symlinks=False):
            yield "file", path, ""
        else:
            yield "other", path, ""


def link_detail(name: str) -> str:
    return (f"{name}: a symbolic link; ingest never follows links, so nothing it points to was read: put the file "
            f"itself in the delivery")


def not_regular_detail(name: str) -> str:
    return (f"{name}: not a regular file (a fifo, socket or device); ingest reads only regular files: put the "
            f"recording itself in the delivery")


def _entry_refusal(kind: str, path: Path, why: str, stage: str = "source") -> Rejection | None:
    """Why the launcher refuses an entry that could hold a recording or a sensor stream; None for a regular file."""
    name = printable_path(path)
    if kind == "link":
        return Rejection(name, stage, "symlink", link_detail(name))
    if kind == "other":
        return Rejection(name, stage, "not_regular_file", not_regular_detail(name))
    if kind == "unreadable":
        return Rejection(name, stage, "unreadable_folder", f"{name}: the folder cannot be listed ({why}), so nothing "
                                                           f"under it was read: make it readable and run again")
    return None


def declared_sensors(folder: Path) -> tuple[dict[str, Mapping[str, Any]], tuple[Rejection, ...]]:
    """The folder's delivery.toml `[sensors.STREAM]` tables (what the partner declared: rate, units, offset), read
    with tomllib as `alliance deliver` writes it; ({}, ()) without one, ({}, a rejection) when it cannot be used."""
    path = folder / "delivery.toml"
    name = printable_path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return {}, ()
    except OSError as e:
        return {}, (Rejection(name, "source", "metadata_invalid", f"{name}: cannot be read ({e.strerror}); sensor "
                                                                  f"files are read with defaults"),)
    if not stat.S_ISREG(mode):
        refusal = _entry_refusal("link" if stat.S_ISLNK(mode) else "other", path, "")
        return {}, (replace(refusal, detail=f"{refusal.detail}; sensor files are read with defaults"),)
    try:
        sensors = tomllib.loads(path.read_bytes().decode("utf-8")).get("sensors", {})
        if not isinstance(sensors, dict) or not all(isinstance(v, dict) for v in sensors.values()):
            raise ValueError("[sensors] must hold one table per stream, e.g. [sensors.imu]")
    except (OSError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return {}, (Rejection(name, "source", "metadata_invalid", f"{name}: {safe_text(str(e))}; sensor files are "
                                                                  f"read with defaults: fix the file"),)
    return sensors, ()


def declared_consent(folder: Path) -> dict[str, bool]:
    """faces_allowed and audio_allowed of the folder's delivery.toml `[consent]`: each false unless it says true. A
    folder has no contract, so without one (or with one that cannot be read: declared_sensors reports it) faces are
    de-identified and audio dropped, as under a contract's defaults."""
    path = folder / "delivery.toml"
    try:
        consent = tomllib.loads(path.read_bytes().decode("utf-8")).get("consent", {}) \
            if stat.S_ISREG(os.lstat(path).st_mode) else {}
    except (OSError, ValueError):
        consent = {}
    consent = consent if isinstance(consent, dict) else {}
    return {name: consent.get(name) is True for name in ("faces_allowed", "audio_allowed")}


def _sidecars(video: Path, beside: Sequence[tuple[str, Path, str]], declared: Mapping[str, Mapping[str, Any]]
              ) -> tuple[tuple[SensorSpec, ...], list[Rejection]]:
    """The `{stem}.{stream}.csv` (or `.txt`: Xsens and YEI export text) files beside a video: their specs, and a
    rejection for each one that is a link, not a regular file, or unreadable as declared (the recording is ingested
    without that stream)."""
    specs, refused = [], []
    for kind, csv, why in beside:
        stream = csv.name[len(video.stem) + 1:-len(csv.suffix)]
        named = csv.name.startswith(f"{video.stem}.") and csv.suffix in SENSOR_SUFFIXES
        if not named or not stream or "." in stream:
            continue
        name = printable_path(csv)
        refusal = _entry_refusal(kind, csv, why, stage="sensors")
        if refusal is not None:
            refused.append(refusal)
            continue
        try:
            spec = sidecar_spec(csv, video, declared.get(stream))
        except SensorError as e:
            refused.append(Rejection(name, "sensors", e.reason, f"{name}: {safe_text(e.detail)}; clips of "
                                                                f"{printable_path(video)} carry no {stream} data"))
            continue
        except OSError as e:
            refused.append(Rejection(name, "sensors", "sensor_unreadable", f"{name}: cannot be read ({e.strerror}); "
                                                                           f"clips of {printable_path(video)} carry "
                                                                           f"no {stream} data"))
            continue
        specs.append(replace(spec, label=name))
    return tuple(specs), refused


def refs_from_folder(folder: Path, partner: str) -> Sources:
    """Video files under a local folder, never through a link; a `{stem}.{stream}.csv` beside one is its sensor
    stream, read as the folder's delivery.toml declares it. Links, fifos and devices named like videos are refused."""
    folder = folder.resolve()
    delivery = f"folder-{hashlib.sha1(partner.encode() + b':' + os.fsencode(folder)).hexdigest()[:12]}"
    declared, side_refused = declared_sensors(folder)
    consent = declared_consent(folder)
    side_refused = list(side_refused)
    entries = list(scan_folder(folder))
    csvs: dict[Path, list[tuple[str, Path, str]]] = defaultdict(list)
    for kind, path, why in entries:
        if path.suffix in SENSOR_SUFFIXES:
            csvs[path.parent].append((kind, path, why))
    refs, refused = [], []
    for kind, path, why in entries:
        if kind == "unreadable" or (kind == "link" and os.path.isdir(path)):  # could hold recordings: say so
            refused.append(_entry_refusal(kind, path, why))
            continue
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        if kind != "file":
            refused.append(_entry_refusal(kind, path, why))
            continue
        sensors, sensor_refused = _sidecars(path, csvs[path.parent], declared)
        side_refused += sensor_refused
        source = printable_path(path)
        meta = {"source": source, "delivery": delivery, "partner": partner, **consent}
        refs.append(RecordingRef(source, True, partner, delivery, sensors=sensors,
                                 meta_json=json.dumps(meta, sort_keys=True), bytes=os.lstat(path).st_size))
    return Sources(tuple(refs), tuple(refused), tuple(side_refused))


def refs_from_prefix(store: ObjectStore, prefix: str, partner: str) -> Sources:
    """Video objects under a store prefix (key order); `{stem}.{stream}.csv` siblings are not read here. A key the
    store cannot address (a file:// store holds any file name) is refused as invalid_key."""
    found = [o for o in store.list(prefix) if Path(o.key).suffix.lower() in VIDEO_SUFFIXES]
    delivery = f"prefix-{hashlib.sha1(f'{partner}:{store.url}/{prefix}'.encode()).hexdigest()[:12]}"
    refs, refused = [], []
    for o in found:
        try:
            validate_key(o.key)
        except InvalidKey as e:
            name = printable_path(o.key)
            refused.append(Rejection(name, "source", "invalid_key", f"{name}: {safe_text(str(e))}; rename the "
                                                                    f"object to a plain name"))
            continue
        refs.append(RecordingRef(o.key, False, partner, delivery, bytes=o.size,
                                 meta_json=json.dumps({"source": o.key, "delivery": delivery, "partner": partner},
                                                      sort_keys=True)))
    return Sources(tuple(refs), tuple(refused))


def refs_from_catalog(settings: Settings, store: ObjectStore) -> list[RecordingRef]:
    """Accepted recordings of the catalog, with their sensor streams and contract metadata from the manifest."""
    from sqlalchemy import select

    from alliance.catalog import Catalog
    from alliance.models import Recording

    catalog = Catalog(settings.effective_catalog_url)
    try:
        catalog.prepare()
        with catalog.session() as session:
            rows = session.scalars(select(Recording).where(Recording.status == "accepted")
                                   .order_by(Recording.key)).all()
            recordings = [(r.id, r.key, r.partner_id, r.bytes) for r in rows]
    finally:
        catalog.dispose()
    manifests: dict[str, dict] = {}
    refs = []
    for recording_id, key, partner, size in recordings:
        parts = key.split("/")
        if len(parts) < 5 or parts[0] != "landing" or parts[3] != "files":
            raise IngestInputError(f"recording {recording_id}: key {key!r} is not under landing/PARTNER/DELIVERY/"
                                   f"files/; the catalog row is not from `alliance deliver`")
        delivery = parts[2]
        base = "/".join(parts[:3])
        if base not in manifests:
            try:
                manifests[base] = json.loads(store.get_bytes(f"{base}/manifest.json"))
            except KeyNotFound as e:
                raise IngestInputError(f"{store.describe(base + '/manifest.json')}: missing for accepted recording "
                                       f"{recording_id}; re-deliver or revoke it") from e
        manifest = manifests[base]
        relative = "/".join(parts[4:])
        entry = next((r for r in manifest.get("recordings", []) if r.get("path") == relative), {})
        sensors = tuple(SensorSpec.from_manifest(s, f"{base}/files/{s['path']}", label=f"{base}/files/{s['path']}")
                        for s in entry.get("sensors", []))
        consent = manifest.get("consent", {})
        meta = {"device": entry.get("device"), "license": manifest.get("license"),
                "consent_scope": consent.get("scope"), "consent_expires": consent.get("expires"),
                "faces_allowed": consent.get("faces_allowed", False), "audio_allowed": consent.get("audio_allowed",
                                                                                                  False),
                "delivery": delivery, "partner": partner, "start_time": entry.get("start_time"), "source": key}
        refs.append(RecordingRef(key, False, partner, delivery, recording_id, sensors,
                                 json.dumps(meta, sort_keys=True, default=str), size or 0))
    return refs


def resolve_source(settings: Settings, store: ObjectStore, source: str, partner: str = "local") -> Sources:
    """'catalog' | a local folder | a store prefix -> the recordings to ingest, and what was refused on the way."""
    shown = printable_path(source)
    if source == "catalog":
        found = Sources(tuple(refs_from_catalog(settings, store)))
        where = "the catalog has no accepted recording; deliver some first (`alliance deliver`)"
    elif Path(source).expanduser().is_dir():
        found = refs_from_folder(Path(source).expanduser(), partner)
        where = f"{shown}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder"
    else:
        prefix = source.removeprefix("store:")
        try:
            found = refs_from_prefix(store, prefix, partner)
        except InvalidKey as e:
            raise IngestInputError(f"{shown}: neither a local folder nor a store prefix ({safe_text(str(e))})") from e
        where = (f"{store.describe(prefix)}: no video objects under this store prefix (and no local folder of that "
                 f"name)")
    if not found.refs and not found.refused:
        raise IngestInputError(where)
    return found

"""The data contract: the versioned delivery manifest (pydantic), its JSON Schema, its bounds and its store layout."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from alliance.errors import InvalidKey
from alliance.store import validate_key
from alliance.tables import Rejection
from partners.errors import ContractError, TooLarge

CONTRACT_VERSION = "1.0"
CONSENT_SCOPES = ("pretraining", "evaluation", "research", "commercial")
MEDIA_TYPES = ("video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo", "video/mp2t")
MOUNTINGS = ("head", "chest", "wrist", "robot", "handheld", "fixed", "vehicle")
DEVICE_KINDS = ("glasses", "headcam", "phone", "robot", "bodycam", "dashcam", "camera", "other")
SLUG = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SHA256 = r"^[0-9a-f]{64}$"
MAX_PATH_DEPTH = 16
MAX_FILE_BYTES = 1 << 44  # 16 TiB: what the contract can express; the service sets its own, lower limit

ConsentScope = Literal["pretraining", "evaluation", "research", "commercial"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096, allow_inf_nan=False)


def check_relative_path(path: str) -> str:
    """A manifest path: relative, '/'-separated, no '..', no absolute or drive paths, safe characters only."""
    if not isinstance(path, str) or not path:
        raise PydanticCustomError("unsafe_path", "empty path: give the file's path relative to the delivery folder")
    try:
        validate_key(path)
    except InvalidKey as e:
        raise PydanticCustomError(
            "unsafe_path", "{path}: {why}; paths must be relative to the delivery folder, without '..', "
            "and use only letters, digits and ' ._=+@,-'", {"path": path[:200], "why": str(e).split(": ", 1)[-1]}
        ) from e
    if path.count("/") >= MAX_PATH_DEPTH:
        raise PydanticCustomError("unsafe_path", "{path}: nested deeper than {depth} folders",
                                  {"path": path[:200], "depth": MAX_PATH_DEPTH})
    return path


SafePath = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(check_relative_path)]


def check_delivery_name(name: str) -> str:
    """A partner's delivery name, in any script: NFC-normalised, 1 to 64 characters, printable, no '/' or '\\'."""
    import unicodedata

    name = unicodedata.normalize("NFC", name)
    if not 1 <= len(name) <= 64:
        raise PydanticCustomError("delivery_name_invalid", "a delivery name has 1 to 64 characters; this one has {n}",
                                  {"n": len(name)})
    bad = [c for c in name if unicodedata.category(c)[0] in "CZ" and c != " " or c in "/\\"]
    if bad or name != name.strip():
        raise PydanticCustomError("delivery_name_invalid", "'{name}': a delivery name may use letters of any script, "
                                  "digits, spaces inside and punctuation, but no control characters, '/' or '\\', "
                                  "and no leading or trailing spaces", {"name": name[:80]})
    return name


DeliveryName = Annotated[str, Field(min_length=1, max_length=256, description="the partner's own name for this "
                                    "delivery, unique per partner, in any script (stored as given)"),
                         AfterValidator(check_delivery_name)]


def delivery_key(name: str) -> str:
    """The ASCII id a delivery name is stored under: the name itself when it is a slug, otherwise its ASCII letters
    plus '=' and a hash of the whole name (so names in any script get distinct, safe store keys)."""
    import hashlib
    import unicodedata

    if re.fullmatch(SLUG, name):
        return name
    ascii_part = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    ascii_part = re.sub(r"[^a-z0-9._-]+", "-", ascii_part).strip("-._")[:40]
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{ascii_part or 'd'}={digest}"  # '=' is no slug character: never the key of another (slug) name


class CameraIntrinsics(_Strict):
    """Pinhole intrinsics in pixels of the delivered resolution, plus optional distortion coefficients."""

    fx: float = Field(gt=0)
    fy: float = Field(gt=0)
    cx: float = Field(ge=0)
    cy: float = Field(ge=0)
    distortion: list[float] = Field(default_factory=list, max_length=16)
    model: Literal["pinhole", "opencv", "fisheye"] = "pinhole"


class Device(_Strict):
    """What recorded the video and where it was worn or mounted."""

    kind: Literal["glasses", "headcam", "phone", "robot", "bodycam", "dashcam", "camera", "other"]
    model: str = Field(min_length=1, max_length=200)
    intrinsics: CameraIntrinsics | None = None
    mounting: Literal["head", "chest", "wrist", "robot", "handheld", "fixed", "vehicle"]


SENSOR_FORMATS = ("csv", "npy", "xsens", "ximu", "ngimu", "ximu3", "yei")
CANONICAL_SENSOR_COLUMNS = ("t", "ax", "ay", "az", "gx", "gy", "gz", "mx", "my", "mz")


class SensorFile(_Strict):
    """One timestamped numeric stream (IMU, gaze, joints...) recorded with the video: a plain CSV or NPY table, or
    an IMU vendor export (ingest.imu_formats) whose header carries its columns, units and sometimes its rate."""

    stream: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="stream name, e.g. 'imu'")
    path: SafePath
    sha256: str = Field(pattern=SHA256)
    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)
    format: Literal["csv", "npy", "xsens", "ximu", "ngimu", "ximu3", "yei"] = Field(
        description="csv (a plain table, or a vendor export recognised by its header), npy, or a vendor export: "
                    "xsens (MT Manager text export), ximu (x-IMU CalInertialAndMag.csv), ngimu (sensors.csv), "
                    "ximu3 (Inertial.csv), yei (3-Space log)")
    columns: list[str] = Field(default_factory=list, max_length=256,
                               description="column names, timestamp included; vendor exports: taken from the file")
    units: dict[str, str] = Field(default_factory=dict, description="unit per column, e.g. {'ax': 'm/s^2'}; on a "
                                  "vendor export these override the file's (keys: file column or t, ax..gz, mx..mz)")
    rate_hz: float | None = Field(None, gt=0, le=100_000, description="required for npy and plain CSV; a vendor "
                                  "export's own (header, registers file, timestamps) is used when absent")
    clock_offset_s: float = Field(0.0, description="add to sensor timestamps to get seconds from the video's start; "
                                  "a vendor export's timestamps count from its first sample")
    timestamp: str = Field("t", description="the column that holds the timestamps, in seconds")

    def vendor_format(self) -> str | None:
        """The vendor export this entry declares, by name or by a CSV header; None for a plain table."""
        if self.format not in ("csv", "npy"):
            return self.format
        if self.format == "csv" and self.timestamp not in self.columns:
            from ingest.imu_formats import header_format

            return header_format(self.columns)
        return None

    @model_validator(mode="after")
    def _columns_consistent(self) -> "SensorFile":
        if len(set(self.columns)) != len(self.columns):
            raise PydanticCustomError("duplicate_entry", "{path}: column names repeat", {"path": self.path})
        vendor = self.vendor_format()
        if vendor is None:
            if len(self.columns) < 2:
                raise PydanticCustomError("sensor_columns", "{path}: declare at least two columns (the timestamp "
                                          "and a value) for a {f} table", {"path": self.path, "f": self.format})
            if self.timestamp not in self.columns:
                raise PydanticCustomError("sensor_columns", "{path}: timestamp column {t!r} is not among columns {c}",
                                          {"path": self.path, "t": self.timestamp, "c": self.columns})
            if self.rate_hz is None:
                raise PydanticCustomError("sensor_columns", "{path}: rate_hz is required for a {f} table",
                                          {"path": self.path, "f": self.format})
        known = set(self.columns) | (set(CANONICAL_SENSOR_COLUMNS) if vendor else set())
        unknown = sorted(set(self.units) - known)
        if unknown and not (vendor and not self.columns):
            raise PydanticCustomError("sensor_columns", "{path}: units given for unknown columns {u}",
                                      {"path": self.path, "u": unknown})
        return self


class RecordingEntry(_Strict):
    """One video file of the delivery and the sensor streams recorded with it."""

    path: SafePath
    sha256: str = Field(pattern=SHA256)
    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)
    media_type: Literal["video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo",
                        "video/mp2t"]
    device: Device
    start_time: datetime
    duration_s: float | None = Field(None, ge=0, description="declared length; the probe measures it when absent")
    sensors: list[SensorFile] = Field(default_factory=list, max_length=32)


class Consent(_Strict):
    """What the people recorded agreed to, until when, and what may appear."""

    scope: list[ConsentScope] = Field(min_length=1, max_length=len(CONSENT_SCOPES))
    expires: date
    faces_allowed: bool = False
    pii_allowed: bool = False
    audio_allowed: bool = False


class DeliveryManifest(_Strict):
    """A delivery: who sends it, under which license and consent, and every file with its hash and size."""

    contract_version: Literal["1.0"] = CONTRACT_VERSION
    partner: str = Field(pattern=SLUG)
    delivery: DeliveryName
    license: str = Field(min_length=1, max_length=200)
    consent: Consent
    recordings: list[RecordingEntry] = Field(min_length=1, max_length=10_000)
    notes: str = Field("", max_length=4000)

    def files(self) -> Iterator["ManifestFile"]:
        """Every file the delivery carries, recordings first then their sensor files, in manifest order."""
        for recording in self.recordings:
            yield ManifestFile(recording.path, recording.sha256, recording.bytes, "recording", recording.path)
        for recording in self.recordings:
            for sensor in recording.sensors:
                yield ManifestFile(sensor.path, sensor.sha256, sensor.bytes, "sensor", recording.path)

    def canonical_json(self) -> bytes:
        """The manifest as stored: sorted keys, no whitespace, so the same content always hashes the same."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ManifestFile:
    """One file to upload: recordings and sensor files alike."""

    path: str
    sha256: str
    bytes: int
    kind: str  # "recording" or "sensor"
    recording: str  # the recording path it belongs to


@dataclass(frozen=True)
class ContractBounds:
    """What a delivered recording must measure up to (versioned with the contract)."""

    codecs: tuple[str, ...] = ("h264", "hevc", "vp9", "av1", "vp8", "mpeg4")
    min_side: int = 32
    max_side: int = 7680
    min_fps: float = 1.0
    max_fps: float = 240.0
    min_duration_s: float = 0.5
    max_duration_s: float = 4 * 3600.0
    duration_tolerance_s: float = 0.5  # declared vs probed, plus 5% of the declared length
    sensor_rate_tolerance: float = 0.1  # measured rate within 10% of the declared one
    max_nan_run_s: float = 0.1  # longest run of missing samples in any column


@dataclass(frozen=True)
class ManifestLimits:
    """Bounds on the manifest document itself, checked before it is parsed."""

    max_bytes: int = 2 << 20
    max_depth: int = 16


# --------------------------------------------------------------------------- store layout


def landing_prefix(partner: str, delivery: str) -> str:
    return f"landing/{partner}/{delivery_key(delivery)}"


def manifest_key(partner: str, delivery: str) -> str:
    return f"{landing_prefix(partner, delivery)}/manifest.json"


def file_key(partner: str, delivery: str, path: str) -> str:
    return f"{landing_prefix(partner, delivery)}/files/{path}"


def report_prefix(partner: str, delivery: str) -> str:
    return f"reports/{partner}/{delivery_key(delivery)}"


def quarantine_prefix(partner: str, delivery: str) -> str:
    return f"quarantine/{partner}/{delivery_key(delivery)}"


# --------------------------------------------------------------------------- parsing


def json_depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether brackets nest deeper than max_depth, found in one pass without parsing (strings skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


_PYDANTIC_REASONS = {"unsafe_path", "duplicate_entry", "sensor_columns", "delivery_name_invalid"}


def _problem(error: dict[str, Any]) -> dict[str, str]:
    loc = ".".join(str(part) for part in error.get("loc", ()))
    kind = error.get("type", "")
    if kind in _PYDANTIC_REASONS:
        reason = kind
    elif "scope" in loc.split("."):
        reason = "unknown_consent_scope"
    elif kind == "extra_forbidden":
        reason = "unknown_field"
    elif kind == "missing":
        reason = "missing_field"
    elif loc == "contract_version":
        reason = "unsupported_contract_version"
    else:
        reason = "manifest_invalid"
    message = error.get("msg", "invalid")
    if reason == "unknown_consent_scope":
        message = f"{error.get('input')!r} is not a consent scope; use one of {', '.join(CONSENT_SCOPES)}"
    return {"reason": reason, "field": loc or "(manifest)", "detail": f"{loc or 'manifest'}: {message}"}


def validation_refusal(where: str, e: ValidationError, fallback: str = "manifest_invalid") -> ContractError:
    """A pydantic refusal as the contract's reasons, each problem naming its field; the first leads the message."""
    problems = [_problem(error) for error in e.errors(include_url=False)]
    first = problems[0] if problems else {"reason": fallback, "detail": str(e)}
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ContractError(first["reason"], f"{where}: {first['detail']}{more}", problems)


def parse_manifest(raw: bytes | str | dict, limits: ManifestLimits = ManifestLimits()) -> DeliveryManifest:
    """Parse and check a manifest document; raises ContractError/TooLarge naming every problem found."""
    if isinstance(raw, dict):
        data = raw
    else:
        raw = raw.encode() if isinstance(raw, str) else raw
        if len(raw) > limits.max_bytes:
            raise TooLarge("manifest_too_large", f"the manifest is {len(raw)} bytes; the limit is {limits.max_bytes}: "
                           "split the delivery into several")
        if json_depth_exceeds(raw, limits.max_depth):
            raise ContractError("manifest_too_deep", f"the manifest nests deeper than {limits.max_depth} levels: "
                                "follow the schema from `alliance contract schema`")
        try:
            data = json.loads(raw)
        except ValueError as e:  # bad JSON, bad UTF-8, or an integer of thousands of digits
            raise ContractError("manifest_not_json", f"the manifest is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ContractError("manifest_invalid", "the manifest must be a JSON object: see `alliance contract schema`")
    try:
        return DeliveryManifest.model_validate(data)
    except ValidationError as e:
        raise validation_refusal("the manifest breaks the contract", e) from e


def contract_problems(manifest: DeliveryManifest, today: date | None = None) -> list[Rejection]:
    """What a schema cannot say: expired consent, duplicate paths or contents, sensor files shared by recordings."""
    today = today or datetime.now(timezone.utc).date()
    problems: list[Rejection] = []
    if manifest.consent.expires < today:
        problems.append(Rejection(
            "manifest.json", "contract", "consent_expired",
            f"consent expired on {manifest.consent.expires.isoformat()}: renew the consent and set consent.expires "
            "to the new date, or leave these recordings out"))
    seen_paths: dict[str, str] = {}
    seen_content: dict[str, str] = {}
    for file in manifest.files():
        lowered = file.path.lower()  # case-insensitive file systems would fold these into one file
        if lowered in seen_paths:
            problems.append(Rejection(file.path, "contract", "duplicate_entry",
                                      f"{file.path}: listed more than once in the manifest (also as "
                                      f"{seen_paths[lowered]}): list each file once"))
        else:
            seen_paths[lowered] = file.path
        if file.sha256 in seen_content and file.kind == "recording":
            problems.append(Rejection(file.path, "contract", "duplicate_entry",
                                      f"{file.path}: same sha256 as {seen_content[file.sha256]}: the same recording "
                                      "is listed twice; keep one"))
        elif file.kind == "recording":
            seen_content[file.sha256] = file.path
    return problems


def manifest_schema() -> dict[str, Any]:
    """The contract as JSON Schema (draft 2020-12), with its version and the allowed values spelled out."""
    schema = DeliveryManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://alliance.example/contract/{CONTRACT_VERSION}/delivery-manifest.json"
    schema["title"] = f"Alliance delivery manifest, contract {CONTRACT_VERSION}"
    return schema


_SLUG_RE = re.compile(SLUG)


def is_slug(value: str) -> bool:
    return bool(_SLUG_RE.match(value))

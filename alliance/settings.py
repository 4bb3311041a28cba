"""One typed, frozen configuration, read from defaults, an optional TOML file and ALLIANCE_* variables."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from alliance.errors import ConfigError

if TYPE_CHECKING:
    from alliance.store import ObjectStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

MASK = "****"


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible endpoint; empty fields fall back to boto3's own chain."""

    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    max_attempts: int = 8
    part_size_mb: int = 8
    max_inflight_parts: int = 4


@dataclass(frozen=True)
class RunnerSettings:
    """Beam runner options the pipelines start with; any Beam flag may be added on the command line."""

    runner: str = "FnApiRunner"
    direct_running_mode: str = "multi_processing"
    direct_num_workers: int = 0  # 0: one worker per core
    job_endpoint: str = ""
    environment_type: str = ""

    def workers(self) -> int:
        return self.direct_num_workers or (os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one process."""

    home: Path = Path(".alliance")
    store_url: str = ""
    catalog_url: str = ""
    s3: S3Settings = S3Settings()
    runner: RunnerSettings = RunnerSettings()
    source: str = "defaults"

    @property
    def effective_store_url(self) -> str:
        return self.store_url or (self.home.resolve() / "store").as_uri()

    @property
    def effective_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.home.resolve() / 'catalog.db')}"

    def store_address(self) -> "StoreAddress":
        """What a Beam worker needs to reach this process's store, without its credentials."""
        return StoreAddress(self.effective_store_url,
                            dataclasses.replace(self.s3, access_key_id="", secret_access_key=""))

    def masked(self) -> dict[str, Any]:
        """The configuration as plain data with every secret replaced by a mask."""
        data = dataclasses.asdict(self)
        data["home"] = str(self.home)
        data["store_url"] = _mask_url_password(self.effective_store_url)
        if data["s3"].get("endpoint_url"):
            data["s3"]["endpoint_url"] = _mask_url_password(data["s3"]["endpoint_url"])
        data["catalog_url"] = _mask_url_password(self.effective_catalog_url)
        if data["s3"]["secret_access_key"]:
            data["s3"]["secret_access_key"] = MASK
        if data["s3"]["access_key_id"]:
            key = data["s3"]["access_key_id"]
            data["s3"]["access_key_id"] = key[:4] + MASK if len(key) > 8 else MASK
        return data


@dataclass(frozen=True)
class StoreAddress:
    """Where the store is and how to reach it (URL, S3 endpoint, region, retry and part sizes), never who may:
    what a pipeline pickles into its DoFns. Each worker opens it with the credentials of its own environment
    (ALLIANCE_S3_ACCESS_KEY_ID / ALLIANCE_S3_SECRET_ACCESS_KEY, AWS_* or boto3's own chain)."""

    url: str
    s3: S3Settings = S3Settings()

    @classmethod
    def of(cls, where: "Settings | StoreAddress") -> "StoreAddress":
        """The address of a process's settings (its secrets left out), or the address itself."""
        return where if isinstance(where, StoreAddress) else where.store_address()

    def open(self) -> "ObjectStore":
        from alliance.store import open_store, with_environment_credentials

        return open_store(self.url, Settings(s3=with_environment_credentials(self.s3)))


# (environment variable, section, field, type)
_ENV_FIELDS: tuple[tuple[str, str | None, str, type], ...] = (
    ("ALLIANCE_HOME", None, "home", Path),
    ("ALLIANCE_STORE", None, "store_url", str),
    ("ALLIANCE_CATALOG", None, "catalog_url", str),
    ("ALLIANCE_S3_ENDPOINT", "s3", "endpoint_url", str),
    ("ALLIANCE_S3_REGION", "s3", "region", str),
    ("ALLIANCE_S3_ACCESS_KEY_ID", "s3", "access_key_id", str),
    ("ALLIANCE_S3_SECRET_ACCESS_KEY", "s3", "secret_access_key", str),
    ("ALLIANCE_S3_MAX_ATTEMPTS", "s3", "max_attempts", int),
    ("ALLIANCE_S3_PART_SIZE_MB", "s3", "part_size_mb", int),
    ("ALLIANCE_BEAM_RUNNER", "runner", "runner", str),
    ("ALLIANCE_BEAM_WORKERS", "runner", "direct_num_workers", int),
    ("ALLIANCE_BEAM_JOB_ENDPOINT", "runner", "job_endpoint", str),
    ("ALLIANCE_BEAM_ENVIRONMENT_TYPE", "runner", "environment_type", str),
)

_TOML_TOP = {"home": Path, "store_url": str, "catalog_url": str}
_SECTIONS = {"s3": S3Settings, "runner": RunnerSettings}


def load_settings(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Defaults, then the TOML file (ALLIANCE_CONFIG or ./alliance.toml if present), then ALLIANCE_* variables."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {"s3": {}, "runner": {}}
    sources = ["defaults"]

    path = config_file or (Path(env["ALLIANCE_CONFIG"]) if env.get("ALLIANCE_CONFIG") else Path("alliance.toml"))
    if config_file is not None or env.get("ALLIANCE_CONFIG") or path.exists():
        _read_toml(path, values, sections)
        sources.append(str(path))

    for var, section, name, kind in _ENV_FIELDS:
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        target = values if section is None else sections[section]
        target[name] = _convert(raw, kind, var)
        if "env" not in sources:
            sources.append("env")
    # The AWS chain's own names are honoured too, so existing S3 setups need no new variables.
    for var, name in (("AWS_ACCESS_KEY_ID", "access_key_id"), ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                      ("AWS_ENDPOINT_URL", "endpoint_url")):
        if env.get(var) and name not in sections["s3"]:
            sections["s3"][name] = env[var]

    return Settings(
        **values,
        s3=S3Settings(**sections["s3"]),
        runner=RunnerSettings(**sections["runner"]),
        source=" < ".join(sources),
    )


def _read_toml(path: Path, values: dict[str, Any], sections: dict[str, dict[str, Any]]) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: configuration file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    for key, raw in data.items():
        if key in _TOML_TOP:
            values[key] = _convert(raw, _TOML_TOP[key], f"{path}:{key}")
        elif key in _SECTIONS and isinstance(raw, dict):
            known = {f.name: f.type for f in dataclasses.fields(_SECTIONS[key])}
            for name, item in raw.items():
                if name not in known:
                    raise ConfigError(f"{path}: unknown setting [{key}].{name}; known: {', '.join(sorted(known))}")
                kind = int if known[name] in (int, "int") else str
                sections[key][name] = _convert(item, kind, f"{path}:[{key}].{name}")
        else:
            raise ConfigError(
                f"{path}: unknown setting {key!r}; known: {', '.join(sorted([*_TOML_TOP, *_SECTIONS]))}")


def _convert(raw: Any, kind: type, where: str) -> Any:
    try:
        return kind(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {raw!r}") from e


def _mask_url_password(url: str) -> str:
    """The URL with the password of its userinfo, and the value of any secret-looking query parameter
    (password, secret, token, key, signature, credential), replaced by the mask."""
    import re

    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if sep and "@" in authority:
        creds, _, host = authority.rpartition("@")
        user, colon, _password = creds.partition(":")
        rest = f"{user}{':' + MASK if colon else ''}@{host}{slash}{tail}"
    masked = f"{scheme}{sep}{rest}"
    return re.sub(r"(?i)([?&;](?:password|passwd|pwd|secret|token|sslpassword|api_key|access_key|secret_key|"
                  r"x-amz-signature|x-amz-credential|x-amz-security-token|sig|signature)=)[^&;#]*",
                  lambda m: m.group(1) + MASK, masked)
"""The manifest of a dataset version: the commit marker readers trust, as a typed, frozen record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from alliance.errors import KeyNotFound
from alliance.store import ObjectStore
from sharding.errors import DatasetError, VersionNotFound, VersionWithdrawn
from sharding.layout import manifest_key, withdrawn_key

FORMAT = "alliance.dataset/1"


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a version: its store key (possibly shared with the parent version), size, hash, samples."""

    key: str
    bytes: int
    sha256: str
    samples: int


@dataclass(frozen=True)
class Manifest:
    """Everything a reader, a verifier and an auditor need; written last, only if absent."""

    name: str
    version: int
    parent: int | None
    shards: tuple[ShardEntry, ...]
    samples: int
    bytes: int
    hours: float
    partners: dict[str, dict[str, float]]  # partner -> {"samples": n, "hours": h}
    clusters: dict[str, int]  # cluster id (as text) -> samples
    index: dict[str, Any]  # {"key", "bytes", "sha256"}
    source: dict[str, Any]  # what produced it: selection run and rows digest, or the redacted parent
    config: dict[str, Any]
    plan_sha256: str
    redaction: dict[str, Any] | None = None
    format: str = FORMAT

    def to_json(self) -> bytes:
        """Canonical bytes: the same version always serialises identically (no wall-clock fields)."""
        return (json.dumps(asdict(self), sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "manifest.json") -> "Manifest":
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise DatasetError(f"{where}: format {raw.get('format')!r} is not {FORMAT!r}; "
                                   f"upgrade Alliance to read it")
            raw["shards"] = tuple(ShardEntry(**s) for s in raw["shards"])
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"{where}: not a valid dataset manifest ({e}); "
                               f"run `alliance datasets verify` on it or rebuild the version") from e

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def shard_keys(self) -> list[str]:
        return [s.key for s in self.shards]


@dataclass(frozen=True)
class Withdrawal:
    """Written next to a manifest when a version's revoked samples were purged from its shards."""

    name: str
    version: int
    successor: int
    revoked_recordings: tuple[str, ...] = field(default_factory=tuple)
    purged_shards: tuple[str, ...] = field(default_factory=tuple)


def load_manifest(store: ObjectStore, name: str, version: int, *, allow_withdrawn: bool = False) -> Manifest:
    """The committed manifest of NAME@vN; a version without one does not exist."""
    key = manifest_key(name, version)
    try:
        data = store.get_bytes(key)
    except KeyNotFound as e:
        raise VersionNotFound(f"{name}@v{version} does not exist: no {store.describe(key)} "
                              f"(an unfinished write has no manifest; run `alliance datasets list`)") from e
    manifest = Manifest.from_json(data, store.describe(key))
    if not allow_withdrawn:
        withdrawal = load_withdrawal(store, name, version)
        if withdrawal is not None:
            raise VersionWithdrawn(f"{name}@v{version} was withdrawn: it held revoked recordings, purged from "
                                   f"{len(withdrawal.purged_shards)} shard(s); read {name}@v{withdrawal.successor}")
    return manifest


def load_withdrawal(store: ObjectStore, name: str, version: int) -> Withdrawal | None:
    key = withdrawn_key(name, version)
    try:
        raw = json.loads(store.get_bytes(key))
    except KeyNotFound:
        return None
    raw["revoked_recordings"] = tuple(raw.get("revoked_recordings", ()))
    raw["purged_shards"] = tuple(raw.get("purged_shards", ()))
    return Withdrawal(**raw)


def latest_version(store: ObjectStore, name: str) -> int | None:
    """The highest committed version: versions are numbered 1, 2, ... without gaps, so probing suffices."""
    version = 0
    while store.exists(manifest_key(name, version + 1)):
        version += 1
    return version or None

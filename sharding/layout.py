"""Where a dataset version lives in the store, and how a clip id becomes a WebDataset sample key."""

from __future__ import annotations

import hashlib
import re

from alliance.errors import InvalidKey

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_REF = re.compile(r"^(?P<name>[^@]+)(?:@v?(?P<version>\d+))?$")
MAX_KEY = 80


def check_name(name: str) -> str:
    """A dataset name: lowercase letters, digits, '-' and '_', at most 64 characters."""
    if not _NAME.match(name or ""):
        raise InvalidKey(f"dataset name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', "
                         f"starting with a letter or digit (e.g. 'ego-pretrain')")
    return name


def dataset_prefix(name: str) -> str:
    return f"datasets/{check_name(name)}/"


def version_prefix(name: str, version: int) -> str:
    if version < 1:
        raise InvalidKey(f"dataset version {version}: versions start at 1")
    return f"{dataset_prefix(name)}v{version}/"


def manifest_key(name: str, version: int) -> str:
    return version_prefix(name, version) + "manifest.json"


def index_key(name: str, version: int) -> str:
    return version_prefix(name, version) + "index.parquet"


def plan_key(name: str, version: int) -> str:
    """The claim of an unfinished version: written first, with put_if_absent."""
    return version_prefix(name, version) + "_work/plan.json"


def work_prefix(name: str, version: int) -> str:
    return version_prefix(name, version) + "_work/"


def receipt_key(name: str, version: int, shard: int) -> str:
    return work_prefix(name, version) + f"receipts/shard-{shard:06d}.json"


def shard_key(name: str, version: int, shard: int) -> str:
    return version_prefix(name, version) + f"shard-{shard:06d}.tar"


def withdrawn_key(name: str, version: int) -> str:
    return version_prefix(name, version) + "withdrawn.json"


def sample_key(clip_id: str) -> str:
    """A WebDataset key for a clip: no dots (WebDataset splits the extension at the first dot), stable, unique.

    Clip ids that are already safe are used as they are; others are sanitised and suffixed with a short
    hash of the original id, so two different clip ids never map to one key.
    """
    if clip_id and len(clip_id) <= MAX_KEY and not _SAFE.search(clip_id):
        return clip_id
    digest = hashlib.sha256(clip_id.encode()).hexdigest()[:12]
    return f"{_SAFE.sub('_', clip_id)[:MAX_KEY - 13]}-{digest}"


def stream_suffix(stream: str) -> str:
    """A sensor stream name as a tar member extension: '{key}.{stream}.npy'."""
    safe = _SAFE.sub("_", stream).lower()
    return safe or "sensor"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'NAME@vN' (or 'NAME@N', or 'NAME' for the latest) -> (name, version or None)."""
    match = _REF.match(ref.strip())
    if not match:
        raise InvalidKey(f"dataset reference {ref!r}: write NAME@vN, e.g. ego-pretrain@v3")
    version = match.group("version")
    return check_name(match.group("name")), int(version) if version else None

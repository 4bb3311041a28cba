"""One small object-store interface over file:// and s3:// (boto3, any endpoint), streaming in bounded memory.

`base` holds the interface and the key rules, `local` the file:// store, `s3` the s3:// one; this module opens the
configured store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from alliance.errors import StoreError
from alliance.store.base import CHUNK, ObjectInfo, ObjectStore, ObjectWriter, validate_key, validate_prefix
from alliance.store.local import LocalStore
from alliance.store.s3 import S3Store

if TYPE_CHECKING:
    from alliance.settings import S3Settings, Settings

__all__ = ["CHUNK", "LocalStore", "ObjectInfo", "ObjectStore", "ObjectWriter", "S3Store", "open_store",
           "validate_key", "validate_prefix", "with_environment_credentials"]


def with_environment_credentials(s3: "S3Settings", env=None) -> "S3Settings":
    """`s3` (an address, no credentials) with the credentials this process's own configuration gives
    (ALLIANCE_S3_* or AWS_* variables, its config file; empty: boto3's own chain); its endpoint when `s3` has none."""
    from dataclasses import replace

    from alliance.settings import load_settings

    own = load_settings(env).s3
    return replace(s3, access_key_id=own.access_key_id, secret_access_key=own.secret_access_key,
                   endpoint_url=s3.endpoint_url or own.endpoint_url)


def open_store(url: str | None = None, settings: "Settings | None" = None) -> ObjectStore:
    """The store at `url` (default: the configured one)."""
    if settings is None:
        from alliance.settings import load_settings

        settings = load_settings()
    url = url or settings.effective_store_url
    scheme = urlparse(url).scheme
    if scheme == "file":
        path = Path(urlparse(url).path)
        path.mkdir(parents=True, exist_ok=True)
        return LocalStore(path)
    if scheme == "s3":
        return S3Store(url, settings.s3)
    if scheme == "":
        return LocalStore(Path(url).resolve())
    raise StoreError(f"{url}: unsupported store scheme {scheme!r}; use file:// or s3://")

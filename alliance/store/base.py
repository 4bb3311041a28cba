"""The object-store interface: safe keys, objects, a streaming writer; file:// and s3:// implement it."""

from __future__ import annotations

import abc
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import urlparse

from alliance.errors import InvalidKey, StoreError

CHUNK = 1 << 20
_SEGMENT = re.compile(r"^[A-Za-z0-9._=+@,-][A-Za-z0-9 ._=+@,-]*$")


def validate_key(key: str) -> str:
    """Return the key if it is safe: relative, no '..' or '.', no empty segments, printable ASCII only."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid key {key!r}: empty")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"invalid key {key!r}: absolute paths are not allowed")
    if len(key) > 1024:
        raise InvalidKey(f"invalid key {key[:60]!r}...: longer than 1024 characters")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey(f"invalid key {key!r}: empty path segment")
        if segment in (".", ".."):
            raise InvalidKey(f"invalid key {key!r}: '{segment}' segments are not allowed")
        if not _SEGMENT.match(segment):
            raise InvalidKey(f"invalid key {key!r}: segment {segment!r} has characters outside [A-Za-z0-9 ._=+@,-]")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a valid key, optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") if prefix.endswith("/") and len(prefix) > 1 else prefix)
    return prefix


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int


class ObjectStore(abc.ABC):
    """Keys are '/'-separated relative paths under the store's root URL."""

    url: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write (or overwrite) a whole object."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object atomically only if it does not exist; False if it already did."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object (for small objects: manifests, reports)."""

    @abc.abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A streaming reader; the caller closes it."""

    @abc.abstractmethod
    def open_write(self, key: str, *, sync: bool = True) -> "ObjectWriter":
        """A streaming writer whose object appears only when it is closed without error.

        sync=False defers durability: the object is visible at close but may not survive a power loss until
        `sync([key])` returns. A caller writing many objects makes them durable together, off its write path.
        """

    def sync(self, keys: Iterable[str]) -> None:
        """Make objects written with sync=False durable. Stores whose writes are durable on return need nothing."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the key exists."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with prefix, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error."""

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        raise StoreError(f"presigned URLs need an s3:// store; {self.url} is {urlparse(self.url).scheme}://")

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        raise StoreError(f"presigned URLs need an s3:// store; {self.url} is {urlparse(self.url).scheme}://")

    def put_file(self, key: str, path: str | Path) -> int:
        """Stream a local file into the store in bounded memory; returns the bytes written."""
        with open(path, "rb") as src:
            return self.put_stream(key, src)

    def put_stream(self, key: str, src: IO[bytes]) -> int:
        total = 0
        with self.open_write(key) as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                total += len(chunk)
        return total

    def get_file(self, key: str, path: str | Path) -> int:
        """Stream an object to a local file in bounded memory; returns the bytes read."""
        total = 0
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # unique: two fetchers never collide
        try:
            with self.open_read(key) as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    total += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return total

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"


class ObjectWriter(abc.ABC):
    """A file-like sink; the object is committed on close() and discarded on abort()."""

    key: str
    bytes_written: int = 0

    @abc.abstractmethod
    def write(self, data: bytes) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> "ObjectWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

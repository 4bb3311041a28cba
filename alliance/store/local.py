"""file:// objects: a directory tree written through temporary files renamed into place, never following a link."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from alliance.errors import AccessDenied, KeyNotFound
from alliance.store.base import ObjectInfo, ObjectStore, ObjectWriter, validate_key, validate_prefix


class LocalStore(ObjectStore):
    """A directory tree; writes go to a temporary file and are renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as w:
            w.write(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise KeyNotFound(f"{self.describe(key)}: no such object") from e
        except PermissionError as e:
            raise AccessDenied(f"{self.describe(key)}: access denied ({e.strerror})") from e

    def open_write(self, key: str, *, sync: bool = True) -> ObjectWriter:
        return _LocalWriter(self._path(key), key, sync=sync)

    def sync(self, keys: Iterable[str]) -> None:
        """fsync each file, then each directory holding one (their names came from renames), in parallel."""
        paths = [self._path(key) for key in keys]
        targets = [*paths, *sorted({p.parent for p in paths})]
        if len(targets) <= 2:
            for target in targets:
                _fsync_path(target)
            return
        with ThreadPoolExecutor(min(8, len(targets)), thread_name_prefix="fsync") as pool:
            list(pool.map(_fsync_path, targets))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as e:
            raise KeyNotFound(f"{self.describe(key)}: no such object") from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        base = self.root / head if head else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            found = []
            for name in filenames:
                if name.startswith("."):  # in-flight temporary files
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, os.path.getsize(os.path.join(dirpath, name))))
            yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # prune empty parents so listings stay clean
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as e:
        raise KeyNotFound(f"{path}: no such object to sync") from e
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalWriter(ObjectWriter):
    def __init__(self, path: Path, key: str, *, sync: bool = True):
        self.key = key
        self.path = path
        self.sync = sync
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        self.file = os.fdopen(fd, "wb")
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        n = self.file.write(data)
        self.bytes_written += n
        return n

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.flush()
        if self.sync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

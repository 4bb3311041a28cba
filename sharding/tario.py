"""Deterministic tar members written straight into a store writer, and tar streams read back as samples."""

from __future__ import annotations

import hashlib
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, BinaryIO, Iterator

from sharding.errors import DatasetError

BLOCK = 512
RECORD = 20 * BLOCK
COPY_CHUNK = 1 << 20
MTIME = 0  # fixed: the same samples give the same bytes on every run and machine


def member_header(name: str, size: int) -> bytes:
    """A ustar header with fixed owner, group, mode and mtime, so shard bytes depend on content only."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    try:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError as e:
        raise DatasetError(f"tar member {name!r} cannot be written as ustar ({e}); shorten the sample key") from e


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


@dataclass(frozen=True)
class MemberSpan:
    """Where a member's data lies in the shard: byte offset of its first data byte, and its size."""

    name: str
    offset: int
    size: int


class TarSink:
    """Appends members to a binary sink (a store ObjectWriter), counting offsets and hashing every byte.

    Large chunks are hashed on a helper thread while the sink writes them (both release the GIL), one chunk
    in flight at most, so memory stays at two chunks and the hash is in write order.
    """

    def __init__(self, sink: IO[bytes] | "object"):
        self.sink = sink
        self.offset = 0
        self.digest = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="shard-sha256")
        self._pending: Future | None = None

    def _settle(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self._settle()
        if len(data) >= 1 << 16:
            self._pending = self._hasher.submit(self.digest.update, data)
        else:
            self.digest.update(data)
        self.sink.write(data)
        self.offset += len(data)

    def add_bytes(self, name: str, data: bytes) -> MemberSpan:
        self._write(member_header(name, len(data)))
        span = MemberSpan(name, self.offset, len(data))
        self._write(data)
        self._write(padding(len(data)))
        return span

    def add_stream(self, name: str, size: int, src: BinaryIO, where: str) -> MemberSpan:
        """Copy exactly `size` bytes from src in bounded chunks; a source that changed size is an error."""
        self._write(member_header(name, size))
        span = MemberSpan(name, self.offset, size)
        left = size
        while left > 0:
            chunk = src.read(min(COPY_CHUNK, left))
            if not chunk:
                raise DatasetError(f"{where}: ended after {size - left} of {size} bytes while sharding; "
                                   f"the object changed since planning: re-run the shard pipeline")
            self._write(chunk)
            left -= len(chunk)
        if src.read(1):
            raise DatasetError(f"{where}: longer than the {size} bytes planned; the object changed since "
                               f"planning: re-run the shard pipeline")
        self._write(padding(size))
        return span

    def finish(self) -> tuple[int, str]:
        """End-of-archive blocks, padded to a whole tar record; returns (total bytes, sha256)."""
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD
        self._write(b"\0" * end)
        self._settle()
        self._hasher.shutdown()
        return self.offset, self.digest.hexdigest()

    def close(self) -> None:
        """Stop the hashing thread (finish() does it too); safe to call after an error."""
        self._hasher.shutdown(wait=True, cancel_futures=True)


def split_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """'dir/key.imu.npy' -> ('dir/key', 'imu.npy'), as WebDataset groups members."""
    head, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key:
        return None, None
    return (f"{head}/{key}" if head else key), ext


def iter_members(stream: BinaryIO, where: str) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """Regular members of a tar stream, in order, read sequentially (works on S3 bodies)."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for info in archive:
                if not info.isreg():
                    continue
                handle = archive.extractfile(info)
                yield info, handle.read() if handle else b""
    except tarfile.TarError as e:
        raise DatasetError(f"{where}: not a readable tar shard ({e}); run `alliance datasets verify`") from e


def iter_samples(stream: BinaryIO, where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each consecutive group of members sharing a key."""
    key: str | None = None
    members: dict[str, bytes] = {}
    for info, data in iter_members(stream, where):
        member_key, ext = split_name(info.name)
        if member_key is None:
            continue
        if member_key != key:
            if key is not None:
                yield key, members
            key, members = member_key, {}
        members[ext] = data
    if key is not None:
        yield key, members

"""Deterministic tar members written straight into a store writer, and tar streams read back as samples."""

from __future__ import annotations

import hashlib
import queue
import tarfile
import threading
from dataclasses import dataclass
from typing import IO, BinaryIO, Iterator

from sharding.errors import DatasetError

BLOCK = 512
RECORD = 20 * BLOCK
COPY_CHUNK = 1 << 20
MTIME = 0  # fixed: the same samples give the same bytes on every run and machine


def member_header(name: str, size: int) -> bytes:
    """A ustar header with fixed owner, group, mode and mtime, so shard bytes depend on content only."""
    encoded = name.encode("utf-8")
    if len(encoded) <= 100 and name.isascii() and 0 <= size < 8**11:
        return _fast_header(encoded, size)
    return _tarfile_header(name, size)


def _tarfile_header(name: str, size: int) -> bytes:
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


def _header_template() -> bytes:
    """tarfile's own header for an empty name and size, with the checksum field blank (eight spaces)."""
    header = bytearray(_tarfile_header("x", 0))
    header[0:1] = b"\0"
    header[148:156] = b" " * 8
    return bytes(header)


_TEMPLATE = _header_template()


def _fast_header(name: bytes, size: int) -> bytes:
    """The bytes tarfile would write for a short ASCII name (a test proves it), without its per-call overhead."""
    header = bytearray(_TEMPLATE)
    header[0:len(name)] = name
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


@dataclass(frozen=True)
class MemberSpan:
    """Where a member's data lies in the shard: byte offset of its first data byte, and its size."""

    name: str
    offset: int
    size: int


class _SpareBuffers:
    """Chunk buffers kept between sinks, so each shard does not fault in (and zero) fresh memory."""

    def __init__(self, keep: int):
        self.keep = keep
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        return bytearray(COPY_CHUNK)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._buffers) < self.keep:
                self._buffers.append(buffer)


_SPARE = _SpareBuffers(keep=12)  # two streams' worth (TarSink.BUFFERS each), 12 MiB at most held idle

# a chunk to hash (after any batched small writes), and the pool buffer that holds it
_HashItem = tuple[tuple["bytes | bytearray | memoryview", ...], "bytearray | None"]


class TarSink:
    """Appends members to a binary sink (a store ObjectWriter), counting offsets and hashing every byte.

    The sha256 runs on a helper thread fed through a bounded queue (hashlib releases the GIL on large
    buffers), so hashing overlaps reading and writing instead of following each chunk in lock-step. Member
    data is read into a small pool of reused buffers, which go back to the pool once hashed; small writes
    (headers, padding) are batched with the next large chunk so the hash stays in write order. Memory: at
    most BUFFERS chunks per sink. The sink must not keep a reference to what it is given after write().
    """

    BUFFERS = 6
    LARGE = 1 << 16

    def __init__(self, sink: IO[bytes] | "object"):
        self.sink = sink
        self.offset = 0
        self.digest = hashlib.sha256()
        self._small = bytearray()
        self._made = 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._queue: queue.Queue[_HashItem | None] = queue.Queue(self.BUFFERS)
        self._hasher = threading.Thread(target=self._hash_loop, name="shard-sha256", daemon=True)
        self._hasher.start()

    def _hash_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            pieces, buffer = item
            for piece in pieces:
                self.digest.update(piece)
            if buffer is not None:
                self._free.put(buffer)

    def _buffer(self) -> bytearray:
        """A free chunk buffer; waits for the hasher to hand one back once BUFFERS exist."""
        if self._made < self.BUFFERS and self._free.empty():
            self._made += 1
            return _SPARE.take()
        return self._free.get()

    def _write(self, data: bytes | memoryview, buffer: bytearray | None = None) -> None:
        """Write and hash `data`; `buffer` (holding data) goes back to the pool once the hash has read it."""
        if len(data) < self.LARGE:
            self._small += data
            if buffer is not None:
                self._free.put(buffer)
        else:
            pieces, self._small = ((self._small, data) if self._small else (data,)), bytearray()
            self._queue.put((pieces, buffer))  # blocks while BUFFERS chunks wait: memory stays bounded
        self.sink.write(data)
        self.offset += len(data)

    def _stop_hashing(self) -> None:
        if self._hasher.is_alive():
            self._queue.put(None)
            self._hasher.join()
        while not self._free.empty():
            _SPARE.give(self._free.get())

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
        readinto = getattr(src, "readinto", None)
        left = size
        while left > 0:
            want = min(COPY_CHUNK, left)
            if readinto is not None:
                buffer = self._buffer()
                got = readinto(memoryview(buffer)[:want]) or 0
                chunk: bytes | memoryview = memoryview(buffer)[:got]
            else:
                buffer, chunk = None, src.read(want)
                got = len(chunk)
            if not got:
                if buffer is not None:
                    self._free.put(buffer)
                raise DatasetError(f"{where}: ended after {size - left} of {size} bytes while sharding; "
                                   f"the object changed since planning: re-run the shard pipeline")
            self._write(chunk, buffer)
            left -= got
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
        if self._small:
            self._queue.put(((self._small,), None))
            self._small = bytearray()
        self._stop_hashing()
        return self.offset, self.digest.hexdigest()

    def close(self) -> None:
        """Stop the hashing thread (finish() does it too); safe to call after an error."""
        self._stop_hashing()


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

"""One small object-store interface over file:// and s3:// (boto3, any endpoint), streaming in bounded memory."""

from __future__ import annotations

import abc
import logging
import os
import re
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Iterable, Iterator
from urllib.parse import urlparse

from alliance.errors import AccessDenied, AlreadyExists, InvalidKey, KeyNotFound, StoreError

if TYPE_CHECKING:
    from alliance.settings import S3Settings, Settings

log = logging.getLogger(__name__)
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


# --------------------------------------------------------------------------- file://


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


# --------------------------------------------------------------------------- s3://

_DENIED = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AllAccessDisabled", "Forbidden", "403"}
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class S3Store(ObjectStore):
    """A bucket and prefix on any S3 endpoint; botocore's standard retry mode backs off on throttling and 5xx."""

    def __init__(self, url: str, s3: "S3Settings"):
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        if not parsed.netloc:
            raise StoreError(f"{url}: an s3:// store URL needs a bucket, e.g. s3://bucket/prefix")
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.settings = s3
        session = boto3.session.Session(
            aws_access_key_id=s3.access_key_id or None,
            aws_secret_access_key=s3.secret_access_key or None,
            region_name=s3.region or None,
        )
        self.client = session.client(
            "s3",
            endpoint_url=s3.endpoint_url or None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": s3.max_attempts},
                max_pool_connections=max(10, s3.max_inflight_parts * 2),
            ),
        )
        self.part_size = max(5, s3.part_size_mb) << 20

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, key: str, action: str) -> StoreError:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{self._key(key) if key else self.prefix}"
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _DENIED or status == "403":
                return AccessDenied(f"access denied: {action} {where} ({code or status}); check the credentials "
                                    f"and this identity's rights on bucket {self.bucket!r}")
            if code in _MISSING or status == "404":
                return KeyNotFound(f"{where}: no such {'bucket' if code == 'NoSuchBucket' else 'object'}")
            if code in _EXISTS or status == "412":
                return AlreadyExists(f"{where}: already exists")
            return StoreError(f"{action} {where} failed: {code or status}: {e}")
        if isinstance(e, BotoCoreError):
            return StoreError(f"{action} {where} failed: {e}")
        return StoreError(f"{action} {where} failed: {e!r}")

    def _call(self, action: str, key: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key, action) from e

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data,
                       IfNoneMatch="*")
        except AlreadyExists:
            return False
        return True

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as body:
            return body.read()

    def open_read(self, key: str) -> BinaryIO:
        response = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"]

    def open_write(self, key: str, *, sync: bool = True) -> ObjectWriter:
        return _S3MultipartWriter(self, key)  # an S3 object is durable once its upload completes

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except KeyNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        head = self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix.rstrip("/"), self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"][strip:], int(item["Size"]))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s)

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        return self.client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s)

    def presign_upload_part(self, key: str, upload_id: str, part_number: int, expires_s: int = 3600) -> str:
        return self.client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id, "PartNumber": part_number},
            ExpiresIn=expires_s)

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (for fixtures and first runs)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in _MISSING:
                raise self._error(e, "", "head bucket") from e
            self._call("create bucket", "", self.client.create_bucket, Bucket=self.bucket)


class _S3MultipartWriter(ObjectWriter):
    """Buffers one part at a time and uploads at most `max_inflight_parts` concurrently: memory stays bounded."""

    def __init__(self, store: S3Store, key: str):
        self.store = store
        self.key = key
        self.full_key = store._key(key)
        self.buffer = bytearray()
        self.bytes_written = 0
        self.upload_id: str | None = None
        self.parts: list[Future] = []
        self.inflight = threading.BoundedSemaphore(store.settings.max_inflight_parts)
        self.pool: ThreadPoolExecutor | None = None
        self.closed = False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            room = self.store.part_size - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if len(self.buffer) == self.store.part_size:
                part, self.buffer = self.buffer, bytearray()  # hand the full buffer over: no copy
                self._submit(part)
        self.bytes_written += len(data)
        return len(data)

    def _submit(self, part: bytearray) -> None:
        if self.upload_id is None:
            created = self.store._call("create multipart upload", self.key, self.store.client.create_multipart_upload,
                                       Bucket=self.store.bucket, Key=self.full_key)
            self.upload_id = created["UploadId"]
            self.pool = ThreadPoolExecutor(self.store.settings.max_inflight_parts, thread_name_prefix="s3-part")
        self.inflight.acquire()  # blocks the producer while max parts are in flight
        number = len(self.parts) + 1
        future = self.pool.submit(self._upload_part, number, part)
        future.add_done_callback(lambda _f: self.inflight.release())
        self.parts.append(future)

    def _upload_part(self, number: int, part: bytearray) -> dict:
        response = self.store._call("upload part", self.key, self.store.client.upload_part, Bucket=self.store.bucket,
                                    Key=self.full_key, UploadId=self.upload_id, PartNumber=number, Body=part)
        return {"PartNumber": number, "ETag": response["ETag"]}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.upload_id is None:  # small object: one request
                self.store.put_bytes(self.key, bytes(self.buffer))
                return
            if self.buffer:
                part, self.buffer = self.buffer, bytearray()
                self._submit(part)
            parts = [f.result() for f in self.parts]
            self.store._call("complete multipart upload", self.key, self.store.client.complete_multipart_upload,
                             Bucket=self.store.bucket, Key=self.full_key, UploadId=self.upload_id,
                             MultipartUpload={"Parts": parts})
        except BaseException:
            self._abort_upload()
            raise
        finally:
            if self.pool:
                self.pool.shutdown(wait=True)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._abort_upload()
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _abort_upload(self) -> None:
        if self.upload_id is None:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.full_key,
                                                     UploadId=self.upload_id)
        except (ClientError, BotoCoreError) as e:
            # the original error is what the user needs; this one is only worth a warning
            log.warning("could not abort multipart upload of %s: %s", self.store.describe(self.key), e)


# --------------------------------------------------------------------------- opening


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

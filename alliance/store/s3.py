"""s3:// objects on any endpoint through boto3: retries, multipart writes in bounded memory, presigned URLs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

from alliance.errors import AccessDenied, AlreadyExists, KeyNotFound, StoreError
from alliance.store.base import ObjectInfo, ObjectStore, ObjectWriter, validate_key, validate_prefix

if TYPE_CHECKING:
    from alliance.settings import S3Settings

log = logging.getLogger(__name__)


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

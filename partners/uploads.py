"""Multipart uploads of partner files: presigned S3 part URLs, or the service's own signed part endpoint on file://."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from alliance.store import CHUNK, ObjectStore, S3Store
from partners.errors import Conflict, Forbidden, TooLarge


@dataclass(frozen=True)
class PartSpec:
    number: int  # 1-based, as S3 counts
    bytes: int


def part_layout(size: int, part_size: int) -> list[PartSpec]:
    """Fixed-size parts covering size bytes; the last one shorter."""
    count = max(1, math.ceil(size / part_size))
    return [PartSpec(n + 1, min(part_size, size - n * part_size)) for n in range(count)]


class Uploads:
    """The upload backend for one store; `key` is the landing key, `staging` a per-file prefix for file:// parts."""

    def __init__(self, store: ObjectStore, secret: bytes, part_size: int):
        self.store = store
        self.secret = secret
        self.part_size = part_size
        self.s3 = store if isinstance(store, S3Store) else None

    # ----------------------------------------------------------------- S3: the store's own multipart upload

    def _s3_call(self, action: str, key: str, fn, **kwargs):
        return self.s3._call(action, key, fn, Bucket=self.s3.bucket, Key=self.s3._key(key), **kwargs)

    def begin(self, key: str, checksums: bool = False) -> str | None:
        """Open a multipart upload (S3) and return its id; None on file:// (parts go to staging). With checksums,
        the upload is created for SHA-256 part checksums, which the store checks as each part arrives."""
        if self.s3 is None:
            return None
        extra = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
        return self._s3_call("create multipart upload", key, self.s3.client.create_multipart_upload,
                             **extra)["UploadId"]

    def _s3_parts(self, key: str, upload_id: str) -> list[dict]:
        """The store's listing of the parts it holds, every page."""
        parts: list[dict] = []
        marker = 0
        while True:
            page = self._s3_call("list parts", key, self.s3.client.list_parts, UploadId=upload_id,
                                 PartNumberMarker=marker)
            parts += page.get("Parts", [])
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def received(self, key: str, upload_id: str | None, staging: str) -> dict[int, int]:
        """{part number: bytes} of the parts the store already holds."""
        if self.s3 is None:
            found = {}
            for info in self.store.list(f"{staging}/"):
                name = info.key.rsplit("/", 1)[-1]
                if name.startswith("part-") and name[5:].isdigit():
                    found[int(name[5:])] = info.size
            return found
        return {int(part["PartNumber"]): int(part["Size"]) for part in self._s3_parts(key, upload_id)}

    def part_url(self, key: str, upload_id: str | None, part: PartSpec, expires_s: int, local_url: str,
                 token_id: str, checksum: str | None = None) -> str:
        """A URL good for one PUT of exactly part.bytes bytes to this part of this file, until it expires; on
        file:// it names the token it was issued to, and dies with that token. On S3 a checksum (base64 SHA-256
        of the part) is signed into the URL: the PUT must send it as x-amz-checksum-sha256, and the store refuses
        bytes that do not match it (BadDigest)."""
        if self.s3 is not None:
            params = {"Bucket": self.s3.bucket, "Key": self.s3._key(key), "UploadId": upload_id,
                      "PartNumber": part.number, "ContentLength": part.bytes}
            if checksum is not None:
                params["ChecksumSHA256"] = checksum
            return self.s3.client.generate_presigned_url("upload_part", ExpiresIn=expires_s, Params=params)
        expires = int(time.time()) + expires_s
        path = local_url.split("://", 1)[-1].split("/", 1)[-1]  # host-independent: proxies may rewrite it
        return (f"{local_url}?tok={token_id}&expires={expires}"
                f"&sig={self.sign(f'/{path}', expires, part.bytes, token_id)}")

    def finish(self, key: str, upload_id: str | None, staging: str, layout: list[PartSpec],
               checksums: list[str] | None = None) -> None:
        """Assemble the parts into the landing object; refuses when a part is missing or of the wrong size. On S3
        the parts are listed once, for their sizes and their ETags."""
        listed = self._s3_parts(key, upload_id) if self.s3 is not None else []
        have = ({int(p["PartNumber"]): int(p["Size"]) for p in listed} if self.s3 is not None
                else self.received(key, upload_id, staging))
        missing = [p.number for p in layout if have.get(p.number) != p.bytes]
        extra = sorted(set(have) - {p.number for p in layout})
        if extra:
            raise TooLarge("oversize_upload", f"parts {extra} are beyond the file's declared size: "
                           "re-hash the file and deliver again")
        if missing:
            raise Conflict("parts_missing", f"parts {missing} of {len(layout)} have not arrived (or have the wrong "
                           "size): upload them, then complete the file again")
        if self.s3 is not None:
            self._complete_s3(key, upload_id, sorted(listed, key=lambda p: int(p["PartNumber"])), checksums)
            return
        with self.store.open_write(key) as target:
            for part in layout:
                with self.store.open_read(self.part_key(staging, part)) as source:
                    while chunk := source.read(CHUNK):
                        target.write(chunk)
        self.discard(key, None, staging)

    def _complete_s3(self, key: str, upload_id: str, listed: list[dict], checksums: list[str] | None) -> None:
        """Complete a multipart upload; with checksums the store compares each part's SHA-256 with what it holds
        (an upload created for checksums cannot complete without them)."""
        from botocore.exceptions import BotoCoreError, ClientError

        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]
        if checksums is not None:
            for part in parts:
                part["ChecksumSHA256"] = checksums[int(part["PartNumber"]) - 1]
        try:
            self.s3.client.complete_multipart_upload(Bucket=self.s3.bucket, Key=self.s3._key(key), UploadId=upload_id,
                                                     MultipartUpload={"Parts": parts})
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "BadDigest":
                raise Conflict("part_checksum_mismatch", f"{key.rsplit('/', 1)[-1]}: the store holds parts whose "
                               "SHA-256 differs from the checksums sent with complete: the file changed since "
                               "its parts were sent; deliver it again") from None
            if code == "InvalidRequest" and checksums is None:
                raise Conflict("checksums_required", f"{key.rsplit('/', 1)[-1]}: its parts were planned with "
                               "checksums: send the same {\"part_size\", \"sha256\"} body with complete") from None
            raise self.s3._error(e, key, "complete multipart upload") from e
        except BotoCoreError as e:
            raise self.s3._error(e, key, "complete multipart upload") from e

    def abort_partner(self, catalog, partner: str) -> int:
        """Abort every open S3 multipart upload of a partner (its presigned part URLs then fail at once); returns
        how many. On file:// nothing is needed: the signed part endpoint checks the token's state itself."""
        from sqlalchemy import select

        from alliance.models import Delivery, DeliveryDetail, DeliveryFile
        from partners.contract import file_key
        from partners.db import writing

        if self.s3 is None:
            return 0
        aborted = 0
        with writing(catalog) as session:
            rows = session.execute(select(DeliveryFile, DeliveryDetail.name).join(
                Delivery, Delivery.id == DeliveryFile.delivery_id).join(
                DeliveryDetail, DeliveryDetail.delivery_id == DeliveryFile.delivery_id).where(
                Delivery.partner_id == partner, DeliveryFile.upload_id.is_not(None))).all()
            for row, name in rows:
                self.discard(file_key(partner, name, row.path), row.upload_id, "")
                row.upload_id = None
                aborted += 1
        return aborted

    def discard(self, key: str, upload_id: str | None, staging: str) -> None:
        """Drop an unfinished upload's parts."""
        if self.s3 is not None and upload_id:
            self._s3_call("abort multipart upload", key, self.s3.client.abort_multipart_upload, UploadId=upload_id)
        for info in list(self.store.list(f"{staging}/")) if self.s3 is None else []:
            self.store.delete(info.key)

    # ----------------------------------------------------------------- file://: the service's own part endpoint

    def sign(self, path: str, expires: int, size: int, token_id: str) -> str:
        message = f"{path}|{expires}|{size}|{token_id}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def check_signature(self, path: str, expires: int, sig: str, size: int, token_id: str) -> None:
        if expires < time.time():
            raise Forbidden("url_expired", "this upload URL has expired: ask for new ones "
                               "(POST /deliveries/{id}/files/{index}/upload)")
        if not hmac.compare_digest(self.sign(path, expires, size, token_id), sig):
            raise Forbidden("bad_signature", "this upload URL is not valid for this part: use the URL exactly "
                               "as the service gave it")

    def part_key(self, staging: str, part: PartSpec) -> str:
        return f"{staging}/part-{part.number:05d}"

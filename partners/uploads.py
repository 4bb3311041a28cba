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

    def begin(self, key: str) -> str | None:
        """Open a multipart upload (S3) and return its id; None on file:// (parts go to staging)."""
        if self.s3 is None:
            return None
        return self._s3_call("create multipart upload", key, self.s3.client.create_multipart_upload)["UploadId"]

    def received(self, key: str, upload_id: str | None, staging: str) -> dict[int, int]:
        """{part number: bytes} of the parts the store already holds."""
        if self.s3 is None:
            found = {}
            for info in self.store.list(f"{staging}/"):
                name = info.key.rsplit("/", 1)[-1]
                if name.startswith("part-") and name[5:].isdigit():
                    found[int(name[5:])] = info.size
            return found
        parts: dict[int, int] = {}
        marker = 0
        while True:
            page = self._s3_call("list parts", key, self.s3.client.list_parts, UploadId=upload_id,
                                 PartNumberMarker=marker)
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = int(part["Size"])
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def part_url(self, key: str, upload_id: str | None, part: PartSpec, expires_s: int, local_url: str,
                 token_id: str) -> str:
        """A URL good for one PUT of exactly part.bytes bytes to this part of this file, until it expires; on
        file:// it names the token it was issued to, and dies with that token."""
        if self.s3 is not None:
            return self.s3.client.generate_presigned_url(
                "upload_part", ExpiresIn=expires_s, Params={
                    "Bucket": self.s3.bucket, "Key": self.s3._key(key), "UploadId": upload_id,
                    "PartNumber": part.number, "ContentLength": part.bytes})
        expires = int(time.time()) + expires_s
        path = local_url.split("://", 1)[-1].split("/", 1)[-1]  # host-independent: proxies may rewrite it
        return (f"{local_url}?tok={token_id}&expires={expires}"
                f"&sig={self.sign(f'/{path}', expires, part.bytes, token_id)}")

    def finish(self, key: str, upload_id: str | None, staging: str, layout: list[PartSpec]) -> None:
        """Assemble the parts into the landing object; refuses when a part is missing or of the wrong size."""
        have = self.received(key, upload_id, staging)
        missing = [p.number for p in layout if have.get(p.number) != p.bytes]
        extra = sorted(set(have) - {p.number for p in layout})
        if extra:
            raise TooLarge("oversize_upload", f"parts {extra} are beyond the file's declared size: "
                           "re-hash the file and deliver again")
        if missing:
            raise Conflict("parts_missing", f"parts {missing} of {len(layout)} have not arrived (or have the wrong "
                           "size): upload them, then complete the file again")
        if self.s3 is not None:
            etags = []
            marker = 0
            while True:
                page = self._s3_call("list parts", key, self.s3.client.list_parts, UploadId=upload_id,
                                     PartNumberMarker=marker)
                etags += [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in page.get("Parts", [])]
                if not page.get("IsTruncated"):
                    break
                marker = int(page["NextPartNumberMarker"])
            self._s3_call("complete multipart upload", key, self.s3.client.complete_multipart_upload,
                          UploadId=upload_id, MultipartUpload={"Parts": sorted(etags, key=lambda e: e["PartNumber"])})
            return
        with self.store.open_write(key) as target:
            for part in layout:
                with self.store.open_read(self.part_key(staging, part)) as source:
                    while chunk := source.read(CHUNK):
                        target.write(chunk)
        self.discard(key, None, staging)

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

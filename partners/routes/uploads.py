"""Routes that move a file's bytes: plan its parts (URLs for those missing), take a part on a file:// store's
signed endpoint, and assemble the file once every part arrived."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from alliance.models import ApiToken, Delivery, DeliveryDetail, DeliveryFile, utcnow
from alliance.store import S3Store
from partners.api import FileState, PartUrl, UploadPlan
from partners.contract import file_key
from partners.db import writing
from partners.deliveries import file_state, own_delivery, own_file, staging
from partners.deps import ERRORS, Caller, DeliveryId, FileIndex, ServiceState, State
from partners.errors import Conflict, Forbidden, NotFound, PartnerError, TooLarge
from partners.uploads import PartSpec, part_layout

router = APIRouter()
Sha256B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")]


class PartChecksums(BaseModel):
    """The partner's SHA-256 of every part of the file (base64, as S3's x-amz-checksum-sha256), for the part size
    it cut the file with: each part URL then carries its checksum, and a part damaged on the way is refused."""

    model_config = ConfigDict(extra="forbid")
    part_size: int = Field(gt=0)
    sha256: list[Sha256B64] = Field(max_length=10_000)


@router.post("/deliveries/{delivery_id}/files/{index}/upload", response_model=UploadPlan, responses=ERRORS,
             name="plan_upload")
def plan_upload(request: Request, delivery_id: DeliveryId, index: FileIndex, who: Caller, state: State,
                checksums: Annotated[PartChecksums | None, Body()] = None) -> UploadPlan:
    """Presigned URLs for the parts of one file not yet received (a resumed upload re-sends nothing). With the
    parts' checksums in the body, each URL carries its part's checksum (409 `part_size_mismatch` when they were
    cut with another part size: the problem gives the service's `part_size`)."""
    config, uploads = state.config, state.uploads
    with writing(state.catalog) as session:
        delivery, detail = own_delivery(session, who, delivery_id)
        row = own_file(session, delivery_id, index)
        layout = part_layout(row.bytes, config.part_size)
        plan = UploadPlan(index=index, path=row.path, state=row.state, part_size=config.part_size,
                          parts_total=len(layout))
        if delivery.status != "open" or row.state != "pending":
            plan.done = [p.number for p in layout]
            return plan
        if checksums is not None and (checksums.part_size != config.part_size or len(checksums.sha256) != len(layout)):
            raise Conflict("part_size_mismatch", f"{row.path}: {len(checksums.sha256)} checksums of "
                           f"{checksums.part_size}-byte parts; the service cuts this file into {len(layout)} parts "
                           f"of {config.part_size} bytes: send one checksum per part of that size",
                           [{"reason": "part_size_mismatch", "path": row.path, "part_size": config.part_size,
                             "parts": len(layout)}])
        key = file_key(who.partner, detail.name, row.path)
        parts_at = staging(who.partner, detail.name, index)
        if row.bytes == 0:  # nothing to send: the empty object is written here
            state.store.put_bytes(key, b"")
            row.state, row.updated_at = "uploaded", utcnow()
            plan.state = "uploaded"
            return plan
        upload_id = row.upload_id
    # the object store's round trips (open the multipart upload, list its parts) run outside the writing session:
    # on SQLite every writer of this process waits for it, so other files' plans and completes would queue
    fresh = False
    if upload_id is None and isinstance(state.store, S3Store):
        started = uploads.begin(key, checksums=checksums is not None)
        with writing(state.catalog) as session:
            claimed = session.execute(update(DeliveryFile).where(
                DeliveryFile.delivery_id == delivery_id, DeliveryFile.idx == index, DeliveryFile.state == "pending",
                DeliveryFile.upload_id.is_(None)).values(upload_id=started)).rowcount
            now = own_file(session, delivery_id, index) if not claimed else None
            now_state, now_upload = (now.state, now.upload_id) if now is not None else ("pending", started)
        if claimed:
            upload_id, fresh = started, True
        else:  # a concurrent request opened one first (or the file closed meanwhile): use that one, drop ours
            uploads.discard(key, started, parts_at)
            if now_state != "pending" or now_upload is None:
                raise Conflict("upload_closed", f"file {index} of delivery {delivery_id} is {now_state}; "
                               "its parts can no longer change")
            upload_id = now_upload
    have = {} if fresh else uploads.received(key, upload_id, parts_at)  # a new upload holds nothing yet
    plan.done = sorted(p.number for p in layout if have.get(p.number) == p.bytes)
    base = str(request.base_url).rstrip("/")
    plan.urls = [PartUrl(part=p.number, bytes=p.bytes, url=uploads.part_url(
        key, upload_id, p, config.url_expiry_s, f"{base}/uploads/{delivery_id}/{index}/{p.number}",
        who.token_id, checksums.sha256[p.number - 1] if checksums is not None else None))
        for p in layout if p.number not in plan.done]
    plan.expires_at = datetime.now(timezone.utc) + timedelta(seconds=config.url_expiry_s)
    return plan


def _signed_part(state: ServiceState, path: str, delivery_id: str, index: int, part: int, tok: str, expires: int,
                 sig: str) -> tuple[str, str, PartSpec]:
    """(staging prefix, file path, part) for a part URL whose signature, token and upload all still hold."""
    with state.catalog.session() as session:
        delivery = session.get(Delivery, delivery_id)
        detail = session.get(DeliveryDetail, delivery_id)
        row = session.scalar(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                        DeliveryFile.idx == index))
        layout = part_layout(row.bytes, state.config.part_size) if row is not None else []
        if (isinstance(state.store, S3Store) or delivery is None or detail is None or row is None
                or part > len(layout)):
            raise NotFound("upload_not_found", "no such upload: ask for part URLs with "
                           f"POST /deliveries/{delivery_id}/files/{index}/upload")
        spec = layout[part - 1]
        state.uploads.check_signature(path, expires, sig, spec.bytes, tok)
        issued_to = session.get(ApiToken, tok)
        if issued_to is None or issued_to.revoked_at is not None or issued_to.partner_id != delivery.partner_id:
            raise Forbidden("token_revoked", "the token these upload URLs were issued to has been revoked "
                            "or rotated: ask for new URLs with a valid token")
        if delivery.status != "open" or row.state != "pending":
            raise Conflict("upload_closed", f"file {index} of delivery {delivery_id} is {row.state}; "
                           "its parts can no longer change")
        return staging(detail.partner_id, detail.name, index), row.path, spec


@router.put("/uploads/{delivery_id}/{index}/{part}", status_code=200, name="upload_part",
            responses={**ERRORS, 200: {"description": "part stored"}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_part(request: Request, delivery_id: DeliveryId, index: FileIndex,
                      part: Annotated[int, Path(ge=1, le=10_000)], state: State,
                      tok: str = Query(pattern=r"^[0-9a-f]{16}$"), expires: int = Query(ge=0, le=1 << 40),
                      sig: str = Query(pattern=r"^[0-9a-f]{64}$")):
    """A file:// store's stand-in for S3's presigned part PUT: the signed URL is the credential, and it lives
    only as long as the token it was issued to (a revoked or rotated token ends it at once)."""
    parts_at, path, spec = await run_in_threadpool(_signed_part, state, request.url.path, delivery_id, index, part,
                                                   tok, expires, sig)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > spec.bytes:
        raise TooLarge("oversize_upload", f"{path} part {part}: {declared} bytes, the part holds {spec.bytes}")
    claimed = request.headers.get("x-amz-checksum-sha256")  # as S3 names it: base64 of the part's SHA-256
    digest = hashlib.sha256() if claimed is not None else None
    writer = await run_in_threadpool(state.store.open_write, state.uploads.part_key(parts_at, spec))
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > spec.bytes:
                raise TooLarge("oversize_upload", f"{path} part {part}: more than its {spec.bytes} bytes")
            if digest is not None:
                digest.update(chunk)
            await run_in_threadpool(writer.write, chunk)
        if total != spec.bytes:
            raise PartnerError("size_mismatch", f"{path} part {part}: {total} bytes arrived, the part holds "
                               f"{spec.bytes}: send exactly the bytes the URL was issued for")
        if digest is not None and base64.b64encode(digest.digest()).decode() != claimed.strip():
            raise PartnerError("part_checksum_mismatch", f"{path} part {part}: the bytes that arrived do not "
                               "match the part's x-amz-checksum-sha256: they were damaged on the way; send the "
                               "part again")
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    await run_in_threadpool(writer.close)
    return Response(status_code=200, headers={"ETag": f'"{part}-{total}"'})


@router.post("/deliveries/{delivery_id}/files/{index}/complete", response_model=FileState, responses=ERRORS,
             name="complete_file")
def complete_file(delivery_id: DeliveryId, index: FileIndex, who: Caller, state: State,
                  checksums: Annotated[PartChecksums | None, Body()] = None) -> FileState:
    """Assemble the file from its parts; every part must have arrived with its exact size. Parts planned with
    checksums are completed with the same body: on S3 the store compares them with each part it holds."""
    config, on_s3 = state.config, isinstance(state.store, S3Store)
    with writing(state.catalog) as session:
        delivery, detail = own_delivery(session, who, delivery_id)
        row = own_file(session, delivery_id, index)
        if row.state != "pending" or delivery.status != "open":
            return file_state(row)
        key = file_key(who.partner, detail.name, row.path)
        parts_at = staging(who.partner, detail.name, index)
        layout = part_layout(row.bytes, config.part_size)
        if checksums is not None and (checksums.part_size != config.part_size or len(checksums.sha256) != len(layout)):
            raise Conflict("part_size_mismatch", f"{row.path}: {len(checksums.sha256)} checksums of "
                           f"{checksums.part_size}-byte parts; the file has {len(layout)} parts of "
                           f"{config.part_size} bytes", [{"reason": "part_size_mismatch", "path": row.path,
                                                          "part_size": config.part_size, "parts": len(layout)}])
        upload_id = row.upload_id
        sums = checksums.sha256 if checksums is not None else None
        if not on_s3:  # file://: assembling reads and deletes the staged parts: one writer at a time
            _finish(state, key, upload_id, parts_at, layout, sums, row)
            row.state, row.upload_id, row.updated_at = "uploaded", None, utcnow()
            return file_state(row)
    # S3: the store's round trips (list the parts, complete) run outside the writing session, which on SQLite
    # holds every other writer of this process; the row is then marked if nothing changed it meanwhile
    try:
        _finish(state, key, upload_id, parts_at, layout, sums, None)
    except PartnerError:
        raise
    except Exception:
        with writing(state.catalog) as session:
            row = own_file(session, delivery_id, index)
            if row.state == "uploaded":  # a concurrent complete of the same file finished it first
                return file_state(row)
        raise
    with writing(state.catalog) as session:
        row = own_file(session, delivery_id, index)
        if row.state == "pending" and row.upload_id == upload_id:
            row.state, row.upload_id, row.updated_at = "uploaded", None, utcnow()
        return file_state(row)


def _finish(state: ServiceState, key: str, upload_id: str | None, parts_at: str, layout: list[PartSpec],
            sums: list[str] | None, row: DeliveryFile | None) -> None:
    """Assemble the file; parts beyond its declared size drop the whole upload (413)."""
    try:
        state.uploads.finish(key, upload_id, parts_at, layout, sums)
    except TooLarge:
        state.uploads.discard(key, upload_id, parts_at)
        if row is not None:
            row.upload_id = None
        raise

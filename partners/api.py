"""The delivery service's request and response models, shared by the service and the partner CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every refusal: a stable snake_case reason, what to do about it, and each problem when there are several."""

    error: str
    detail: str
    problems: list[dict[str, Any]] = Field(default_factory=list)


class FileState(BaseModel):
    """One file of a delivery and where its upload and validation stand."""

    index: int
    path: str
    kind: str
    bytes: int
    sha256: str
    state: str  # pending, uploaded, accepted, rejected
    reason: str | None = None


class DeliveryStatus(BaseModel):
    """A delivery as its partner sees it."""

    id: str
    partner: str
    delivery: str
    status: str  # open, validating, accepted, partial, rejected, error, expired (summary.expired says why)
    contract_version: str
    created_at: datetime
    completed_at: datetime | None = None
    files: list[FileState] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)
    report_url: str | None = None  # on this service, for the token's partner only
    report_html_url: str | None = None
    report_key: str | None = None  # where the report lies in the store


class PartUrl(BaseModel):
    """Where to PUT one part: the body must be exactly `bytes` long, sent with no Content-Type."""

    part: int
    bytes: int
    url: str


class UploadPlan(BaseModel):
    """How to upload one file: fixed-size parts, those already received, and presigned URLs for the rest."""

    index: int
    path: str
    state: str
    part_size: int
    parts_total: int
    done: list[int] = Field(default_factory=list)
    urls: list[PartUrl] = Field(default_factory=list)
    expires_at: datetime | None = None


class RevokeIn(BaseModel):
    """Why consent was withdrawn, kept with the recording."""

    reason: str = Field(min_length=1, max_length=2000)


class RecordingOut(BaseModel):
    """An accepted recording (its id is the SHA-256 of its bytes) and its consent state."""

    id: str
    delivery_id: str
    key: str
    bytes: int
    media_type: str
    duration_s: float | None = None
    status: str  # accepted, revoked
    accepted_at: datetime
    revoked_at: datetime | None = None
    revoke_reason: str | None = None


class AuditOut(BaseModel):
    """One line of a partner's own audit log."""

    at: datetime
    action: str
    target: str | None = None
    status: int
    token_id: str | None = None


class WhoAmI(BaseModel):
    partner: str
    token_id: str


class DeliveryVerdict(BaseModel):
    """What `alliance deliver` ends with: the verdict, counts, refusals by reason and where the report is."""

    delivery_id: str
    delivery: str
    status: str
    recordings_accepted: int = 0
    recordings_rejected: int = 0
    reasons: dict[str, int] = Field(default_factory=dict)
    problems: list[dict[str, str]] = Field(default_factory=list)  # {path, reason, detail, fix}
    report_url: str | None = None
    report_key: str | None = None
    uploaded_bytes: int = 0
    skipped_parts: int = 0  # parts the service already had (a resumed delivery)

"""The catalog's tables (SQLAlchemy 2.x); every schema change also gets an alembic migration."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Partner(Base):
    """A data partner: a company or group that delivers recordings under the contract."""

    __tablename__ = "partners"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # slug, e.g. "glassco"
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """One upload of recordings by one partner, validated as a whole."""

    __tablename__ = "deliveries"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), default="open")  # open, validating, accepted, rejected, partial
    contract_version: Mapped[str] = mapped_column(String(32))
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    report_key: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()


class Recording(Base):
    """An accepted partner file; its id is the SHA-256 of its bytes, so a re-delivery is not a new recording."""

    __tablename__ = "recordings"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id"), index=True)
    key: Mapped[str] = mapped_column(String(1024))  # store key under landing/
    bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(64))
    duration_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32), default="accepted")  # accepted, revoked
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One pipeline or training run, recorded by the command that launched it."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # ingest, curate, shard, train
    status: Mapped[str] = mapped_column(String(32), default="running")  # running, succeeded, failed
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Clip(Base):
    """A window of a recording at training resolution; its id is the recording plus its start time."""

    __tablename__ = "clips"
    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    recording_id: Mapped[str] = mapped_column(ForeignKey("recordings.id"), index=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    key: Mapped[str] = mapped_column(String(1024))
    t0: Mapped[float] = mapped_column(Float)
    t1: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32), default="ingested")


class DatasetVersion(Base):
    """A committed dataset version: it exists once its manifest exists in the store."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_dataset_versions_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    manifest_key: Mapped[str] = mapped_column(String(1024))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    hours: Mapped[float] = mapped_column(Float, default=0.0)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A partner's API token; only the SHA-256 of its secret is stored, so a leaked catalog leaks no token."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public token id, part of the token text
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


class AuditEvent(Base):
    """One partner action on the delivery service (or a refused attempt), append-only."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    partner_id: Mapped[str | None] = mapped_column(String(64), index=True)  # None: the token was not recognised
    token_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))  # e.g. "delivery.open", "recording.revoke"
    target: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status answered
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DeliveryDetail(Base):
    """What the service needs to know of a delivery beyond the kernel's row: its name, layout, size and manifest."""

    __tablename__ = "delivery_details"
    __table_args__ = (UniqueConstraint("partner_id", "name", name="uq_delivery_details_partner_name"),)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id"), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))  # the partner's own delivery id from the manifest
    manifest_key: Mapped[str] = mapped_column(String(1024))
    files: Mapped[int] = mapped_column(Integer)
    bytes_total: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)  # counts by verdict and reason, once validated


class DeliveryFile(Base):
    """One file of a delivery and where its upload stands: pending, uploaded, accepted or rejected."""

    __tablename__ = "delivery_files"
    __table_args__ = (UniqueConstraint("delivery_id", "idx", name="uq_delivery_files_delivery_idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # position in the manifest's file list, the id in URLs
    path: Mapped[str] = mapped_column(String(1024))
    kind: Mapped[str] = mapped_column(String(16))  # recording, sensor
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    upload_id: Mapped[str | None] = mapped_column(String(512))  # the S3 multipart upload, while one is open
    state: Mapped[str] = mapped_column(String(32), default="pending")  # pending, uploaded, accepted, rejected
    reason: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

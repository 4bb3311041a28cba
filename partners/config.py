"""The delivery service's limits and knobs, one frozen tree."""

from __future__ import annotations

from dataclasses import dataclass, field

from partners.contract import ContractBounds, ManifestLimits


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and knobs of the delivery service; the defaults suit one machine and real S3 (parts >= 5 MiB)."""

    part_size: int = 8 << 20
    max_file_bytes: int = 50 << 30
    max_delivery_bytes: int = 500 << 30
    max_files: int = 10_000
    manifest: ManifestLimits = ManifestLimits()
    max_json_body: int = 64 << 10  # bodies other than the manifest
    rate_per_s: float = 20.0  # per token, sustained
    rate_burst: int = 200
    rate_max_buckets: int = 100_000  # tokens and addresses tracked at once; the least recently seen go first
    url_expiry_s: int = 900  # S3 part URLs cannot ask about the token: they are short-lived, re-issued on demand
    probe_timeout_s: float = 10.0
    bounds: ContractBounds = field(default_factory=ContractBounds)
    upload_secret: str = field(default="", repr=False)  # signs file:// part URLs; random per process when empty
    # hostile connections (enforced by partners.server's HTTP protocol; max_headers by the app itself)
    header_timeout_s: float = 10.0  # the request line and headers must arrive within this, from the first byte
    keep_alive_s: int = 5  # an idle connection between requests is closed after this
    body_idle_timeout_s: float = 30.0  # no body byte for this long: the request is cut off (408)
    body_grace_s: float = 10.0  # after this, a body must average at least min_body_rate
    min_body_rate: int = 4096  # bytes per second, over the whole body so far
    max_headers: int = 100
    max_header_bytes: int = 32 << 10
    max_connections: int = 1000  # above this, 503 at once
    open_delivery_ttl_s: float = 7 * 24 * 3600.0  # an open delivery with no activity this long expires
    reap_interval_s: float = 600.0  # how often abandoned deliveries and crash-left staged parts are looked for
    # the audit writer: a batch the catalog refuses is retried with backoff, then set aside (reports/_audit/)
    audit_interval_s: float = 0.2
    audit_max_attempts: int = 8  # about 40 s of backoff in all before a batch is set aside
    audit_max_backoff_s: float = 15.0
    audit_max_queued: int = 50_000  # events waiting while the catalog is down; beyond this the oldest are set aside

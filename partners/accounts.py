"""Partner accounts and API tokens: issued once in clear, stored as SHA-256 hashes, rotated and revoked."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.models import ApiToken, AuditEvent, Partner, utcnow
from partners.contract import is_slug
from partners.db import writing
from partners.errors import AccountError, Unauthorized

TOKEN_PREFIX = "alk"
_TOKEN = re.compile(r"^alk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class IssuedToken:
    """A token as handed to a partner: the only time its secret exists outside the partner's hands."""

    partner: str
    token_id: str
    token: str


@dataclass(frozen=True)
class PartnerSummary:
    """One line of `alliance partners list`."""

    partner: str
    display_name: str
    active_tokens: int
    revoked_tokens: int
    created_at: datetime


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, once its token checked out."""

    partner: str
    token_id: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_token(partner: str) -> tuple[ApiToken, IssuedToken]:
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiToken(id=token_id, partner_id=partner, secret_sha256=_hash(secret))
    return row, IssuedToken(partner, token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}")


def _audit(session, partner: str, token_id: str | None, action: str, detail: dict | None = None) -> None:
    session.add(AuditEvent(partner_id=partner, token_id=token_id, action=action, target=partner, status=200,
                           detail={"by": "operator", **(detail or {})}))


def add_partner(catalog: Catalog, partner: str, display_name: str = "") -> IssuedToken:
    """Create a partner and its first token; refuses a name that exists or is not a slug."""
    if not is_slug(partner):
        raise AccountError("invalid_partner_name", f"{partner!r}: a partner name is lowercase letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit, at most 64 characters")
    with writing(catalog) as session:
        if session.get(Partner, partner) is not None:
            raise AccountError("partner_exists", f"partner {partner!r} already exists: use `alliance partners rotate "
                               f"{partner}` for a new token")
        session.add(Partner(id=partner, display_name=display_name or partner))
        session.flush()
        row, issued = _new_token(partner)
        session.add(row)
        _audit(session, partner, issued.token_id, "partner.add")
    return issued


def ensure_partner(catalog: Catalog, partner: str, display_name: str = "") -> IssuedToken:
    """The demo's entry: the partner exists afterwards and a fresh token is returned (older tokens stay valid)."""
    with writing(catalog) as session:
        exists = session.get(Partner, partner) is not None
    return rotate_token(catalog, partner, revoke_old=False) if exists else add_partner(catalog, partner, display_name)


def _end_uploads(catalog: Catalog, partner: str, store) -> None:
    """Abort the partner's open S3 multipart uploads, so their presigned part URLs stop working now."""
    if store is None:
        return
    from partners.uploads import Uploads

    Uploads(store, b"", 0).abort_partner(catalog, partner)


def rotate_token(catalog: Catalog, partner: str, revoke_old: bool = True, store=None) -> IssuedToken:
    """Issue a new token; the old ones are revoked now unless revoke_old is False (and, given the store, the
    partner's open multipart uploads are aborted: every part URL issued to the old tokens ends at once)."""
    with writing(catalog) as session:
        if session.get(Partner, partner) is None:
            raise AccountError("unknown_partner", f"no partner {partner!r}: add it with `alliance partners add {partner}`")
        revoked = 0
        if revoke_old:
            for old in session.scalars(select(ApiToken).where(ApiToken.partner_id == partner,
                                                              ApiToken.revoked_at.is_(None))):
                old.revoked_at = utcnow()
                revoked += 1
        row, issued = _new_token(partner)
        session.add(row)
        _audit(session, partner, issued.token_id, "token.rotate", {"revoked": revoked})
    if revoked:
        _end_uploads(catalog, partner, store)
    return issued


def revoke_tokens(catalog: Catalog, partner: str, token_id: str | None = None, store=None) -> int:
    """Revoke one token (by id) or all of a partner's tokens; returns how many were active. Given the store, the
    partner's open S3 multipart uploads are aborted, so no presigned part URL outlives the token."""
    with writing(catalog) as session:
        if session.get(Partner, partner) is None:
            raise AccountError("unknown_partner", f"no partner {partner!r}: see `alliance partners list`")
        query = select(ApiToken).where(ApiToken.partner_id == partner, ApiToken.revoked_at.is_(None))
        if token_id:
            query = query.where(ApiToken.id == token_id)
        count = 0
        for row in session.scalars(query):
            row.revoked_at = utcnow()
            count += 1
        if token_id and count == 0:
            raise AccountError("unknown_token", f"partner {partner!r} has no active token {token_id!r}")
        _audit(session, partner, token_id, "token.revoke", {"revoked": count})
    if count:
        _end_uploads(catalog, partner, store)
    return count


def list_partners(catalog: Catalog) -> list[PartnerSummary]:
    with writing(catalog) as session:
        partners = session.scalars(select(Partner).order_by(Partner.id)).all()
        tokens = session.scalars(select(ApiToken)).all()
    return [PartnerSummary(
        p.id, p.display_name,
        sum(1 for t in tokens if t.partner_id == p.id and t.revoked_at is None),
        sum(1 for t in tokens if t.partner_id == p.id and t.revoked_at is not None),
        p.created_at) for p in partners]


def authenticate(catalog: Catalog, token: str) -> Principal:
    """The partner a token acts for; any problem is the same 401 so that nothing about tokens leaks."""
    match = _TOKEN.match(token or "")
    refused = Unauthorized("invalid_token", "missing, malformed, unknown or revoked API token: send "
                           "`Authorization: Bearer alk_...` with a token from `alliance partners add|rotate`")
    if not match:
        raise refused
    token_id, secret = match.groups()
    with writing(catalog) as session:
        row = session.get(ApiToken, token_id)
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_sha256, _hash(secret)):
            raise refused
        now = utcnow()
        last = row.last_used_at
        if last is None or (now.replace(tzinfo=None) - last.replace(tzinfo=None)).total_seconds() > 60:
            row.last_used_at = now  # at most one write a minute per token, not one per request
        return Principal(row.partner_id, row.id)

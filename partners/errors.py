"""The errors of the partner boundary; each carries a stable snake_case reason a partner can look up."""

from __future__ import annotations

from alliance.errors import AllianceError


class PartnerError(AllianceError):
    """A refusal on the partner boundary: `reason` is stable snake_case, the message says what to fix."""

    status_code = 400

    def __init__(self, reason: str, message: str, problems: list[dict] | None = None):
        super().__init__(message)
        self.reason = reason
        self.problems = problems or []


class ContractError(PartnerError):
    """A manifest that breaks the data contract (schema, paths, consent, duplicates, limits)."""

    status_code = 422


class TooLarge(PartnerError):
    """A body, a file or a delivery above the service's size limits."""

    status_code = 413


class NotFound(PartnerError):
    """Something that does not exist for this partner (another partner's ids look exactly like this)."""

    status_code = 404


class Conflict(PartnerError):
    """A request that contradicts the state of a delivery (a different manifest under the same name, missing files)."""

    status_code = 409


class Forbidden(PartnerError):
    """A presigned upload URL that is expired or was not issued for this part."""

    status_code = 403


class Unauthorized(PartnerError):
    """A missing, malformed, unknown or revoked API token."""

    status_code = 401


class RateLimited(PartnerError):
    """Too many requests for one token; retry after `retry_after_s`."""

    status_code = 429

    def __init__(self, reason: str, message: str, retry_after_s: float):
        super().__init__(reason, message)
        self.retry_after_s = retry_after_s


class AccountError(PartnerError):
    """A partner-account operation that cannot be done (unknown partner, duplicate name)."""


class DeliveryFailed(PartnerError):
    """The partner CLI could not finish a delivery (the service refused, or did not answer in time)."""

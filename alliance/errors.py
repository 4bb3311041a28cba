"""The error types that cross package boundaries; each message names what failed and why."""


class AllianceError(Exception):
    """Base of every error a user can act on; the CLI prints its message as one line."""


class ConfigError(AllianceError):
    """A setting that is missing, malformed or contradicts another."""


class StoreError(AllianceError):
    """An object-store operation that failed; the message names the key and the cause."""


class InvalidKey(StoreError, ValueError):
    """A key that would escape its prefix or is malformed; refused before any request."""


class KeyNotFound(StoreError, KeyError):
    """A key that does not exist in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class AccessDenied(StoreError, PermissionError):
    """The store refused the credentials or the rights for this bucket/key."""


class AlreadyExists(StoreError, FileExistsError):
    """A create-if-absent write found the key already there."""


class CatalogError(AllianceError):
    """The catalog database is unreachable, out of date, or refused a write."""


class RetryableError(AllianceError):
    """A fault of the machinery, never of the input: a helper process that did not start, a child that did not take
    the call, a local copy that went away, a store or catalog that failed. Raised so the work is done again (Beam
    retries the bundle; a re-run picks the recording up): it never becomes a rejection."""


def is_infrastructure(error: BaseException) -> bool:
    """Whether `error` is a fault of the machinery rather than of the input or of the code: a RetryableError, a
    CatalogError, or a StoreError other than a missing, malformed or already existing key (those say something about
    the key asked for)."""
    if isinstance(error, (RetryableError, CatalogError)):
        return True
    return isinstance(error, StoreError) and not isinstance(error, (KeyNotFound, InvalidKey, AlreadyExists))


# Stable snake_case reasons a decode gives; each doubles as a rejection reason and a metric name.
DECODE_REASONS = frozenset({
    "empty_file", "not_video", "no_video_stream", "truncated", "corrupt", "resolution_too_large",
    "decode_timeout", "decode_failed", "too_short", "unsupported_codec", "corrupt_frames",
    "deid_failed",  # faces had to be hidden and could not be: the clip is refused, never written in clear
})


class DecodeError(AllianceError):
    """A recording or clip that PyAV cannot turn into frames, ingest's and curation's alike: `path` names it,
    `reason` says why (one of DECODE_REASONS), `detail` how to fix it. A media fault: it always becomes a rejection."""

    def __init__(self, path, reason: str, detail: str):
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown decode reason {reason!r}; known: {', '.join(sorted(DECODE_REASONS))}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {detail} ({reason})")

    def __reduce__(self):  # so it crosses process boundaries (bounded child, Beam workers) intact
        return (type(self), (self.path, self.reason, self.detail))

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

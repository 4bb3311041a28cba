"""Errors of the sharding stage: a dataset version that is missing, unfinished, withdrawn or damaged."""

from __future__ import annotations

from alliance.errors import AllianceError


class DatasetError(AllianceError):
    """A dataset version that cannot be written or read as asked; the message says what to run."""


class SampleError(DatasetError):
    """One sample of a version that cannot be read; `reason` (snake_case) is what a skipping reader counts it under."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # crosses a loader worker's queue whole
        return type(self), (str(self), self.reason)


class VersionNotFound(DatasetError):
    """No manifest at datasets/{name}/v{N}/manifest.json: the version does not exist for readers."""


class VersionWithdrawn(DatasetError):
    """A version whose shards held revoked recordings and were purged; read its redacted successor."""

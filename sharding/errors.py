"""Errors of the sharding stage: a dataset version that is missing, unfinished, withdrawn or damaged."""

from __future__ import annotations

from alliance.errors import AllianceError


class DatasetError(AllianceError):
    """A dataset version that cannot be written or read as asked; the message says what to run."""


class VersionNotFound(DatasetError):
    """No manifest at datasets/{name}/v{N}/manifest.json: the version does not exist for readers."""


class VersionWithdrawn(DatasetError):
    """A version whose shards held revoked recordings and were purged; read its redacted successor."""

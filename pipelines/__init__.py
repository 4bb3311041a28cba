"""Pipelines: Beam DoFns and PTransforms that compose the plain functions of the stage packages."""

import logging


class _DropApitoolsNotice(logging.Filter):
    """Beam warns at import that the BigQuery client is absent; we never use BigQuery, users need not read it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_DropApitoolsNotice())

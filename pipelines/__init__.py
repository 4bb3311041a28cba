"""Pipelines: Beam DoFns and PTransforms that compose the plain functions of the stage packages."""

import logging

# Beam's notices that say nothing a user can act on: the BigQuery client is absent (we never use BigQuery), and a
# ParDo built with with_exception_handling() names output tags its type hints do not declare (they are ours)
_NOISE = ("apitools not found", "requested in with_outputs() but not declared in type hints")


class _DropBeamNoise(logging.Filter):
    """Drops Beam's notices in _NOISE from the root logger, where Beam logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


logging.getLogger().addFilter(_DropBeamNoise())

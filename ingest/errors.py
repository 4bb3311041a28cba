"""The one decode error of ingest (and curation): defined in the kernel so both stages share it, named here for ingest.

A DecodeError is a media fault and becomes a rejection; a fault of the machinery around the decoder (helper, child,
local copy, store) is an alliance.errors.RetryableError instead, and never blames the file.
"""

from __future__ import annotations

from alliance.errors import DECODE_REASONS, DecodeError, RetryableError

__all__ = ["DECODE_REASONS", "DecodeError", "RetryableError"]

"""The one error type of ingest: a file that PyAV or its container cannot turn into frames, with a stable reason."""

from __future__ import annotations

from pathlib import Path

from alliance.errors import AllianceError

# Stable snake_case reasons; each doubles as a rejection reason and a metric name.
DECODE_REASONS = frozenset({
    "empty_file", "not_video", "no_video_stream", "truncated", "corrupt", "resolution_too_large",
    "decode_timeout", "decode_failed", "too_short", "unsupported_codec", "corrupt_frames",
    "deid_failed",  # faces had to be hidden and could not be: the clip is refused, never written in clear
})


class DecodeError(AllianceError):
    """A file that cannot be decoded; `path` names it, `reason` says why (snake_case), `detail` how to fix it."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown decode reason {reason!r}; known: {', '.join(sorted(DECODE_REASONS))}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {detail} ({reason})")

    def __reduce__(self):  # so it crosses process boundaries (bounded child, Beam workers) intact
        return (DecodeError, (self.path, self.reason, self.detail))

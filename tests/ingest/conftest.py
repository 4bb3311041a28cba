"""Fixtures of the ingest tests: tiny synthetic videos and the bad inputs derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.synth import VideoSpec, write_bad_inputs, write_video


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def good_video(media) -> Path:
    """4 s of 64x64 at 10 fps, keyframe every second."""
    return write_video(media / "good.mp4", VideoSpec(frames=40))


@pytest.fixture(scope="session")
def bad_inputs(media, good_video) -> dict[str, Path]:
    return write_bad_inputs(media / "bad", good_video)

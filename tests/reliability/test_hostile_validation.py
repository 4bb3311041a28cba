"""The hostile corpus through delivery validation, delivered honestly (right sizes and hashes): each file refused."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import datetime, timezone

import pytest

from partners.contract import DeliveryManifest
from partners.validate import assess, folder_locator
from tests.reliability.conftest import FULL, record

# real pictures with odd metadata: a video pipeline may accept them (the probe and ingest tests say why)
BENIGN = {"tkhd_display_huge", "stsd_entry_huge", "trak_size_zero", "mp4_with_html_in_free_box"}


@pytest.fixture(scope="module")
def assessed(hostile_corpus):
    folder = hostile_corpus[0].path.parent
    recordings = []
    chosen = [h for h in hostile_corpus if FULL or h.name != "ts_sparse_4gib_tail"]  # CI: no 4 GiB hash
    for h in chosen:
        if h.path.is_file() and not h.path.is_symlink():
            digest = hashlib.sha256()
            with open(h.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            size, sha = os.path.getsize(h.path), digest.hexdigest()
        else:  # links, a folder, a FIFO: what their manifest entry claims does not matter
            size, sha = 1, hashlib.sha256(h.name.encode()).hexdigest()
        recordings.append({"path": h.path.name, "sha256": sha, "bytes": size, "media_type": "video/mp4",
                           "device": {"kind": "glasses", "model": "M", "mounting": "head"},
                           "start_time": datetime(2026, 11, 1, tzinfo=timezone.utc).isoformat()})
    manifest = DeliveryManifest.model_validate({
        "partner": "mallory", "delivery": "hostile", "license": "CC-BY-4.0",
        "consent": {"scope": ["pretraining"], "expires": "2099-01-01"}, "recordings": recordings})
    result = assess(manifest, folder_locator(folder), probe_timeout_s=10.0 if FULL else 3.0)
    by_name = {h.path.name: h for h in chosen}
    reports = {r.path: r for r in result.files}
    record("hostile_validation", files=len(reports), reasons=dict(Counter(
        p.reason for r in reports.values() for p in r.problems)))
    return by_name, reports


def test_every_hostile_file_is_refused_by_validation_with_reasons(assessed):
    by_name, reports = assessed
    assert set(reports) == set(by_name)
    wrong = {name: (r.verdict, [p.reason for p in r.problems]) for name, r in reports.items()
             if by_name[name].name not in BENIGN and (r.verdict != "rejected" or not r.problems)}
    assert not wrong, f"hostile files validation did not refuse: {wrong}"
    for name, report in reports.items():
        for problem in report.problems:
            assert problem.reason == problem.reason.lower() and " " not in problem.reason
            assert name in problem.detail and problem.fix, (name, problem)


def test_files_only_the_contract_can_refuse_are_refused_by_it(assessed):
    by_name, reports = assessed
    reasons = {name: {p.reason for p in r.problems} for name, r in reports.items()}
    assert reasons["ts_timestamps_10_hours.mp4"] & {"duration_out_of_bounds", "fps_out_of_bounds"}
    assert "resolution_out_of_bounds" in reasons["sps_64x65520_in_ts.mp4"] or reasons["sps_64x65520_in_ts.mp4"]
    for name in ("symlink_to_secret_video.mp4", "symlink_to_etc_passwd.mp4", "fifo.mp4", "directory.mp4"):
        assert reasons[name], name


def test_the_benign_ones_are_what_they_claim(assessed):
    _, reports = assessed
    for name in BENIGN:
        report = reports[f"{name}.mp4"]
        if report.verdict == "accepted":
            assert report.facts.get("width") == 64 and report.facts.get("height") == 64, report.facts

"""The partner's HTML report opened in headless Chromium: it renders, offline, and names the failing file and reason."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from partners.folder import check
from partners.report import DeliveryReport, privacy_treatment, render_html
from tests.partners.conftest import make_folder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _report(folder) -> DeliveryReport:
    manifest, assessment = check(folder)
    recordings = [f for f in assessment.files if f.kind == "recording"]
    accepted = sum(1 for f in recordings if f.verdict == "accepted")
    reasons: dict[str, int] = {}
    for file in assessment.files:
        for problem in file.problems:
            reasons[problem.reason] = reasons.get(problem.reason, 0) + 1
    return DeliveryReport(partner="glassco", delivery=manifest.delivery, delivery_id="d" + "1" * 31,
                          contract_version=manifest.contract_version, suite_version="test", status="partial",
                          validated_at=datetime.now(timezone.utc), recordings_accepted=accepted,
                          recordings_rejected=len(recordings) - accepted, reasons=reasons, files=assessment.files,
                          checks=assessment.checks,
                          privacy=privacy_treatment(manifest.consent.faces_allowed, manifest.consent.audio_allowed))


@pytest.mark.slow
def test_the_html_report_renders_in_chromium_and_names_the_failing_file(tmp_path, media):
    folder = make_folder(tmp_path / "glassco", media, {
        "kitchen.mp4": media.good, "kitchen.imu.csv": media.imu, "snapshot.mp4": b"\x89PNG\r\n\x1a\n" + b"\0" * 99})
    page = tmp_path / "report.html"
    page.write_text(render_html(_report(folder)))
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "snapshot.mp4" in dom.stdout and "not_video" in dom.stdout and "How to fix" in dom.stdout
    assert "kitchen.mp4" in dom.stdout and "passed every check" in dom.stdout
    # the contract forbids faces (the default): the partner reads that they are hidden in every clip
    assert "What happens to every accepted recording" in dom.stdout and "hidden in every frame" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=60)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

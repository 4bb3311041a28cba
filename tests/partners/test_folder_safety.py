"""The partner CLI never reads outside the delivery folder, tells the truth in --check, and refuses with reasons."""

from __future__ import annotations

import hashlib
import os

import pytest

from alliance.cli.main import main
from partners import localfs
from partners.client import deliver
from partners.folder import build_manifest, check, load_metadata
from partners.errors import ContractError
from tests.partners.conftest import METADATA, make_folder

SECRET = b"root:$6$very-secret-shadow-hash:19000:0:99999:7:::\n" * 40


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().out


@pytest.fixture
def linked(tmp_path, media):
    """A folder with one real video and links to a file and a folder outside it, and to a file and folder inside."""
    outside = tmp_path / "outside"
    (outside / "day").mkdir(parents=True)
    (outside / "shadow").write_bytes(SECRET)
    (outside / "day" / "other.mp4").write_bytes(media.good2.read_bytes())
    folder = make_folder(tmp_path / "folder", media, {"a.mp4": media.good, "sub/b.mp4": media.good2})
    (folder / "leak.mp4").symlink_to(outside / "shadow")
    (folder / "leak.imu.csv").symlink_to(outside / "shadow")
    (folder / "elsewhere").symlink_to(outside / "day", target_is_directory=True)
    (folder / "again.mp4").symlink_to(folder / "a.mp4")
    (folder / "mirror").symlink_to(folder / "sub", target_is_directory=True)
    return folder


def test_links_inside_and_outside_the_folder_are_refused_never_followed(linked, file_service, capsys, monkeypatch):
    with pytest.raises(ContractError) as refused:
        build_manifest(linked, load_metadata(linked), "partner-a")
    assert refused.value.reason == "symlink"
    assert {p["path"] for p in refused.value.problems} == {"leak.mp4", "leak.imu.csv", "elsewhere", "again.mp4",
                                                          "mirror"}
    assert all(p["reason"] == "symlink" and "cp -L" in p["fix"] for p in refused.value.problems)

    code, out = run(["deliver", str(linked), "--check", "--quiet"], capsys)
    assert code == 3 and "symlink" in out and "leak.mp4" in out and "elsewhere" in out and "Error" not in out
    assert "very-secret" not in out

    with pytest.raises(ContractError):  # the real delivery refuses the same way, before anything is sent
        deliver(linked, file_service.url, file_service.a.token)
    monkeypatch.setenv("ALLIANCE_TOKEN", file_service.a.token)
    code, out = run(["deliver", str(linked), "--to", file_service.url, "--quiet"], capsys)
    assert code == 3 and "symlink" in out
    stored = [p for p in (file_service.store.root).rglob("*") if p.is_file()]
    assert not any(SECRET[:40] in p.read_bytes() for p in stored)
    assert not any("landing" in p.parts for p in stored)

    for name in ("leak.mp4", "leak.imu.csv", "elsewhere", "again.mp4", "mirror"):
        (linked / name).unlink()
    assert deliver(linked, file_service.url, file_service.a.token).status == "accepted"


def test_a_link_planted_after_the_scan_is_not_opened(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_bytes(SECRET)
    folder = tmp_path / "folder"
    (folder / "day").mkdir(parents=True)
    (folder / "day" / "walk.mp4").symlink_to(outside / "shadow")
    (folder / "night").symlink_to(outside, target_is_directory=True)
    for rel in ("day/walk.mp4", "night/shadow"):
        with pytest.raises(ContractError) as refused:
            localfs.read_bytes(folder, rel)
        assert refused.value.reason == "symlink"
    os.mkfifo(folder / "day" / "pipe.mp4")  # a FIFO must not hang the CLI
    with pytest.raises(ContractError) as refused:
        localfs.read_bytes(folder, "day/pipe.mp4")
    assert refused.value.reason == "not_a_file"


def test_delivery_toml_and_the_hash_cache_are_never_read_or_written_through_links(tmp_path, media, capsys):
    outside = tmp_path / "victim.txt"
    outside.write_bytes(SECRET)
    folder = make_folder(tmp_path / "folder", media, {"a.mp4": media.good})
    (folder / ".alliance-hashes.json").symlink_to(outside)
    manifest = build_manifest(folder, load_metadata(folder), "partner-a")
    assert manifest.recordings[0].path == "a.mp4" and outside.read_bytes() == SECRET
    (folder / "delivery.toml").unlink()
    (folder / "delivery.toml").symlink_to(outside)
    code, out = run(["deliver", str(folder), "--check", "--quiet"], capsys)
    assert code != 0 and "symlink" in out and "very-secret" not in out


def test_check_rehashes_unless_told_to_trust_the_cache(tmp_path, media):
    folder = make_folder(tmp_path / "folder", media, {"a.mp4": media.good})
    manifest, assessment = check(folder)
    assert all(f.verdict == "accepted" for f in assessment.files)
    path = folder / "a.mp4"
    before = path.stat()
    changed = bytearray(path.read_bytes())
    changed[-20:] = bytes(20)  # same size, other bytes, mtime put back
    path.write_bytes(bytes(changed))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    truth = hashlib.sha256(bytes(changed)).hexdigest()
    assert check(folder)[0].recordings[0].sha256 == truth
    # even a delivery that trusts the cache sees the change: the ctime moved although the mtime was put back
    assert build_manifest(folder, load_metadata(folder), "p", trust_cache=True).recordings[0].sha256 == truth


def test_delivery_toml_entries_that_name_no_file_are_an_error_naming_them(tmp_path, media, capsys):
    metadata = METADATA + '\n[recordings."../../etc/passwd"]\nduration_s = 2\n[recordings."a.mp4"]\nduration_s = 2\n'
    folder = make_folder(tmp_path / "folder", media, {"a.mp4": media.good}, metadata)
    code, out = run(["deliver", str(folder), "--check", "--quiet"], capsys)
    assert code == 3 and "unknown_recording_entry" in out and "../../etc/passwd" in out


@pytest.mark.parametrize("metadata, reason", [
    ("x = " + "[" * 5000 + "]" * 5000 + "\n" + METADATA, "metadata_invalid"),
    (METADATA.replace('kind = "glasses"', 'kind = "spaceship"'), "manifest_invalid"),
    ('delivery = "bad/name"\n' + METADATA, "delivery_name_invalid"),
])
def test_the_cli_refuses_with_a_reason_never_an_exception_name(tmp_path, media, capsys, metadata, reason):
    folder = make_folder(tmp_path / "folder", media, {"a.mp4": media.good}, metadata)
    code, out = run(["deliver", str(folder), "--check", "--quiet"], capsys)
    assert code == 1 and reason in out
    assert "RecursionError" not in out and "ValidationError" not in out and "--debug" not in out


def test_the_token_never_comes_from_the_command_line(tmp_path, media, file_service, capsys, monkeypatch):
    folder = make_folder(tmp_path / "folder", media, {"a.mp4": media.good})
    token = file_service.a.token
    code, out = run(["deliver", str(folder), "--to", file_service.url, "--token", token], capsys)
    assert code == 2 and "token_on_command_line" in out and "ALLIANCE_TOKEN" in out and token not in out
    monkeypatch.delenv("ALLIANCE_TOKEN", raising=False)
    code, out = run(["deliver", str(folder), "--to", file_service.url], capsys)
    assert code != 0 and "missing_token_or_url" in out
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    code, out = run(["deliver", str(folder), "--to", file_service.url, "--token-file", str(token_file), "--quiet"],
                    capsys)
    assert code == 0 and "accepted" in out and token not in out


def test_the_report_says_not_measured_where_no_refused_file_had_facts(tmp_path, media):
    from datetime import datetime, timezone

    from partners.report import DeliveryReport, render_html

    folder = make_folder(tmp_path / "folder", media, {"bad.mp4": b"\x00" * 500})
    manifest, assessment = check(folder)
    by_check = {c.check: c for c in assessment.checks}
    assert any(c.status == "not measured" and c.failing == 0 for c in by_check.values())
    assert not any(c.status == "fail" and c.failing == 0 for c in by_check.values())
    html = render_html(DeliveryReport(
        partner="p", delivery="d", delivery_id="d0", contract_version="1.0", suite_version="1", status="rejected",
        validated_at=datetime.now(timezone.utc), recordings_accepted=0, recordings_rejected=1, reasons={},
        files=assessment.files, checks=assessment.checks))
    assert "not measured" in html

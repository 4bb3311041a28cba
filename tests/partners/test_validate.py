"""Validation without the service: every bad file refused with its reason, the rest accepted, re-runs change nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from alliance.catalog import Catalog
from alliance.models import Delivery, DeliveryDetail, DeliveryFile, Partner, Recording
from alliance.store import LocalStore
from ingest.synth import VideoSpec, write_video
from partners.folder import build_manifest, check, load_metadata
from partners.contract import file_key, manifest_key
from partners.deliveries import delivery_id_for
from partners.validate import validate_delivery
from tests.partners.conftest import make_folder

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def bad_folder(tmp_path, media):
    good = media.good.read_bytes()
    imu = media.imu.read_text().splitlines()
    backwards = "\n".join([imu[0], *imu[1:50], *reversed(imu[50:80]), *imu[80:]]) + "\n"
    return make_folder(tmp_path / "folder", media, {
        "ok/a.mp4": media.good, "ok/a.imu.csv": media.imu,
        "ok/b.mp4": media.good2,
        "empty.mp4": b"",
        "truncated.mp4": good[: len(good) // 3],
        "picture.mp4": PNG,
        "garbage.mp4": bytes(range(256)) * 8,
        "jumpy.mp4": good + b"\x00", "jumpy.imu.csv": backwards.encode(),
    })


def test_local_check_names_every_bad_file_and_reason(bad_folder):
    manifest, assessment = check(bad_folder)
    verdicts = {f.path: (f.verdict, [p.reason for p in f.problems]) for f in assessment.files}
    assert verdicts["ok/a.mp4"] == ("accepted", []) and verdicts["ok/a.imu.csv"] == ("accepted", [])
    assert verdicts["ok/b.mp4"] == ("accepted", [])
    assert verdicts["empty.mp4"] == ("rejected", ["empty_file"])
    assert verdicts["truncated.mp4"][1][0] in ("truncated", "corrupt", "decode_failed")
    assert verdicts["picture.mp4"] == ("rejected", ["not_video"])
    assert verdicts["garbage.mp4"] == ("rejected", ["not_video"])
    assert verdicts["jumpy.imu.csv"] == ("rejected", ["timestamps_not_monotonic"])
    assert verdicts["jumpy.mp4"] == ("rejected", ["sensor_rejected"])
    assert all("how" not in p.detail or p.fix for f in assessment.files for p in f.problems)
    failing = {c.check for c in assessment.checks if not c.success}
    assert any("probe_reason" in c for c in failing) and any("monotonic" in c for c in failing)
    assert manifest.partner == "local" and len(manifest.recordings) == 7


def test_store_validation_writes_rows_report_and_quarantine_and_is_idempotent(tmp_path, bad_folder):
    store = LocalStore(tmp_path / "store")
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.upgrade()
    manifest = build_manifest(bad_folder, load_metadata(bad_folder), "glassco")
    # land the files as the service would, with one of them changed in transit and one never sent
    delivery_id = delivery_id_for("glassco", manifest.delivery)
    store.put_bytes(manifest_key("glassco", manifest.delivery), manifest.canonical_json())
    for index, file in enumerate(manifest.files()):
        if file.path == "garbage.mp4":
            continue
        data = (bad_folder / file.path).read_bytes()
        if file.path == "ok/b.mp4":
            data = data[:-1] + bytes([data[-1] ^ 1])
        store.put_bytes(file_key("glassco", manifest.delivery, file.path), data)
    with catalog.session() as session:
        session.add(Partner(id="glassco", display_name="GlassCo"))
        session.flush()
        session.add(Delivery(id=delivery_id, partner_id="glassco", status="validating", contract_version="1.0",
                             manifest_sha256="x"))
        session.flush()
        session.add(DeliveryDetail(delivery_id=delivery_id, partner_id="glassco", name=manifest.delivery,
                                   manifest_key=manifest_key("glassco", manifest.delivery),
                                   files=len(list(manifest.files())), bytes_total=0, summary={}))
        for index, file in enumerate(manifest.files()):
            session.add(DeliveryFile(delivery_id=delivery_id, idx=index, path=file.path, kind=file.kind,
                                     bytes=file.bytes, sha256=file.sha256, state="uploaded"))

    report = validate_delivery(store, catalog, delivery_id)
    assert report.status == "partial" and report.recordings_accepted == 1, [(f.path, [p.reason for p in f.problems]) for f in report.files]
    assert report.reasons["sha256_mismatch"] == 1 and report.reasons["file_missing"] == 1
    accepted = next(f for f in report.files if f.path == "ok/a.mp4")
    with catalog.session() as session:
        row = session.get(Recording, accepted.sha256)
        assert row.status == "accepted" and row.key == file_key("glassco", manifest.delivery, "ok/a.mp4")
        assert session.get(Delivery, delivery_id).status == "partial"
    # accepted stays in landing, refused moves to quarantine, with the reasons as jsonl
    assert store.exists(file_key("glassco", manifest.delivery, "ok/a.mp4"))
    assert not store.exists(file_key("glassco", manifest.delivery, "picture.mp4"))
    assert store.exists(f"quarantine/glassco/{manifest.delivery}/files/picture.mp4")
    lines = [json.loads(line) for line in store.get_bytes(
        f"quarantine/glassco/{manifest.delivery}/rejections.jsonl").decode().splitlines()]
    assert {"key": "picture.mp4", "stage": "contract", "reason": "not_video"} == {
        k: v for k, v in lines[[r["key"] for r in lines].index("picture.mp4")].items() if k != "detail"}
    html = store.get_bytes(f"reports/glassco/{manifest.delivery}/report.html").decode()
    assert "picture.mp4" in html and "not_video" in html and "<script" not in html and "http" not in html

    assert validate_delivery(store, catalog, delivery_id) == report  # already validated: the stored report
    again = validate_delivery(store, catalog, delivery_id, force=True)
    assert (again.status, again.reasons) == (report.status, report.reasons)
    assert [f.verdict for f in again.files] == [f.verdict for f in report.files]
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(Recording)) == 1


def test_any_decodable_codec_passes_the_contract_and_one_without_a_decoder_is_refused(tmp_path, media):
    # Cinepak in AVI: a legacy codec PyAV decodes; ingest re-encodes every clip, so the contract takes it
    cinepak = write_video(tmp_path / "cinepak.avi", VideoSpec(frames=20, codec="cinepak", pix_fmt="rgb24"),
                          container_format="avi")
    # the same file with a codec tag nothing decodes
    unknown = cinepak.read_bytes().replace(b"cvid", b"zzzz")
    folder = make_folder(tmp_path / "folder", media, {"old/cinepak.avi": cinepak, "old/unknown.avi": unknown,
                                                      "ok/a.mp4": media.good})
    _, assessment = check(folder)
    verdicts = {f.path: (f.verdict, [p.reason for p in f.problems]) for f in assessment.files}
    assert verdicts["old/cinepak.avi"] == ("accepted", [])
    assert verdicts["old/unknown.avi"] == ("rejected", ["unsupported_codec"])
    assert verdicts["ok/a.mp4"] == ("accepted", [])
    accepted = next(f for f in assessment.files if f.path == "old/cinepak.avi")
    assert (accepted.facts["container"], accepted.facts["codec"]) == ("avi", "cinepak")
    refused = next(f for f in assessment.files if f.path == "old/unknown.avi").problems[0]
    assert "old/unknown.avi" in refused.detail and "no decoder" in refused.fix
    assert not any("codec" in c.check and "probe_reason" not in c.check for c in assessment.checks)

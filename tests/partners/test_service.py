"""The real service on loopback over SeaweedFS and the catalog (SQLite and PostgreSQL): deliveries, resume, refusals."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from sqlalchemy import func, select

from alliance.models import Recording
from partners.client import deliver
from partners.folder import build_manifest, load_metadata
from partners.contract import file_key
from tests.partners.conftest import make_folder


class Interrupted(Exception):
    """Stands for a dropped connection or a closed laptop in the middle of an upload."""


def test_a_full_delivery_by_the_cli_then_a_resend_changes_nothing(service, media, tmp_path, capsys, monkeypatch):
    from alliance.cli.main import main

    good = media.good.read_bytes()
    folder = make_folder(tmp_path / "glasses", media, {
        "day1/walk.mp4": media.good, "day1/walk.imu.csv": media.imu, "day1/desk.mp4": media.good2,
        "picture.mp4": b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "empty.mp4": b"", "cut.mp4": good[: len(good) // 3]})
    with pytest.raises(SystemExit) as leaving:
        monkeypatch.setenv("ALLIANCE_TOKEN", service.a.token)
        main(["deliver", str(folder), "--to", service.url, "--quiet"])
    assert leaving.value.code == 3  # partly refused
    out = capsys.readouterr().out
    assert "partial" in out and "picture.mp4" in out and "not_video" in out and "report:" in out

    verdict = deliver(folder, service.url, service.a.token)  # the same folder again
    assert verdict.status == "partial" and verdict.uploaded_bytes == 0
    assert (verdict.recordings_accepted, verdict.recordings_rejected) == (2, 3)
    reasons = {p["path"]: p["reason"] for p in verdict.problems}
    assert reasons["picture.mp4"] == "not_video" and reasons["empty.mp4"] == "empty_file"
    assert reasons["cut.mp4"] in ("truncated", "corrupt", "decode_failed")

    with service.catalog.session() as session:
        rows = session.scalars(select(Recording).where(Recording.partner_id == "partner-a")).all()
        assert sorted(r.id for r in rows) == sorted(hashlib.sha256((folder / p).read_bytes()).hexdigest()
                                                    for p in ("day1/walk.mp4", "day1/desk.mp4"))
    audit = httpx.get(f"{service.url}/audit", params={"limit": 1000}, headers=service.headers(service.a)).json()
    actions = {event["action"] for event in audit}
    assert {"open_delivery", "plan_upload", "complete_file", "complete_delivery", "get_delivery"} <= actions
    landing = file_key("partner-a", verdict.delivery, "day1/walk.mp4")
    assert service.store.get_bytes(landing) == good
    assert not service.store.exists(file_key("partner-a", verdict.delivery, "picture.mp4"))
    refused = service.store.get_bytes(f"quarantine/partner-a/{verdict.delivery}/rejections.jsonl").decode()
    assert {json.loads(line)["key"] for line in refused.splitlines()} == {"picture.mp4", "empty.mp4", "cut.mp4"}
    html = httpx.get(verdict.report_url, headers=service.headers(service.a)).text
    assert "picture.mp4" in html and "not_video" in html and "How to fix" in html
    assert service.store.exists(verdict.report_key)


def test_an_interrupted_upload_resumes_without_resending_finished_parts(service, media, tmp_path):
    folder = make_folder(tmp_path / "fleet", media, {"long.mp4": media.big})
    sent: list[int] = []

    def drop_after_first(path: str, part: int) -> None:
        sent.append(part)
        raise Interrupted(f"connection lost after part {part} of {path}")

    with pytest.raises(Interrupted):
        deliver(folder, service.url, service.a.token, on_part=drop_after_first, concurrency=1)
    assert sent == [1]
    resumed: list[int] = []
    verdict = deliver(folder, service.url, service.a.token, on_part=lambda path, part: resumed.append(part))
    size = media.big.stat().st_size
    assert sorted(resumed) == [2, 3] and verdict.skipped_parts == 1
    assert verdict.uploaded_bytes == size - service.config.part_size
    assert verdict.status == "accepted", verdict.problems
    assert service.store.get_bytes(file_key("partner-a", verdict.delivery, "long.mp4")) == media.big.read_bytes()


def _manifest_json(folder, partner="partner-a", **changes) -> dict:
    data = json.loads(build_manifest(folder, load_metadata(folder), partner).canonical_json())
    data.update(changes)
    return data


def test_bad_manifests_and_bad_uploads_are_refused_with_their_reason(service, media, tmp_path):
    folder = make_folder(tmp_path / "bad", media, {"a.mp4": media.good, "b.mp4": media.good2})
    api = httpx.Client(base_url=service.url, headers=service.headers(service.a), timeout=30)

    def refusal(body, status) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = api.post("/deliveries", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        return response.json()["error"]

    base = _manifest_json(folder)
    traversal = json.loads(json.dumps(base))
    traversal["recordings"][0]["path"] = "../../etc/passwd"
    assert refusal(traversal, 422) == "unsafe_path"
    absolute = json.loads(json.dumps(base))
    absolute["recordings"][0]["path"] = "/etc/passwd"
    assert refusal(absolute, 422) == "unsafe_path"
    assert refusal({**base, "consent": {**base["consent"], "scope": ["ads"]}}, 422) == "unknown_consent_scope"
    assert refusal({**base, "consent": {**base["consent"], "expires": "2001-01-01"}}, 422) == "consent_expired"
    assert refusal({**base, "recordings": base["recordings"] * 2}, 422) == "duplicate_entry"
    assert refusal(b"[" * 50_000 + b"]" * 50_000, 422) == "manifest_too_deep"
    assert refusal(b"{" + b" " * (3 << 20) + b"}", 413) == "body_too_large"
    assert refusal({**base, "partner": "partner-b"}, 422) == "partner_mismatch"
    huge = json.loads(json.dumps(base))
    huge["recordings"][0]["bytes"] = 1 << 40
    assert refusal(huge, 413) == "file_too_large"

    # a manifest whose hash for b.mp4 is wrong: the bytes arrive, the report says why they were refused
    lying = json.loads(json.dumps(base))
    lying["recordings"][1]["sha256"] = "0" * 64
    opened = api.post("/deliveries", json=lying)
    assert opened.status_code == 201
    delivery = opened.json()["id"]
    for file in opened.json()["files"]:
        plan = api.post(f"/deliveries/{delivery}/files/{file['index']}/upload").json()
        data = (folder / file["path"]).read_bytes()
        oversize = httpx.put(plan["urls"][0]["url"], content=data + b"more")  # longer than the part it was signed for
        assert oversize.status_code == 403
        assert httpx.put(plan["urls"][0]["url"], content=data).status_code == 200
        assert api.post(f"/deliveries/{delivery}/files/{file['index']}/complete").json()["state"] == "uploaded"
    assert api.post(f"/deliveries/{delivery}/complete").status_code == 202
    report = _wait_report(api, delivery)
    verdicts = {f["path"]: [p["reason"] for p in f["problems"]] for f in report["files"]}
    assert verdicts == {"a.mp4": [], "b.mp4": ["sha256_mismatch"]}
    # re-sending the same manifest is the same delivery; a different one under the same name is a conflict
    again = api.post("/deliveries", json=lying)
    assert again.status_code == 200 and again.json()["id"] == delivery and again.json()["status"] == "partial"
    assert refusal({**lying, "notes": "changed"}, 409) == "delivery_conflict"


def _wait_report(api: httpx.Client, delivery: str) -> dict:
    import time

    for _ in range(300):
        status = api.get(f"/deliveries/{delivery}").json()
        if status["status"] in ("accepted", "partial", "rejected"):
            return api.get(f"/deliveries/{delivery}/report.json").json()
        time.sleep(0.1)
    raise AssertionError(f"delivery {delivery} still {status['status']}")


def test_concurrent_upload_plans_share_one_multipart_upload(service, media, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import parse_qs, urlparse

    folder = make_folder(tmp_path / "race", media, {"a.mp4": media.good})
    api = httpx.Client(base_url=service.url, headers=service.headers(service.a), timeout=30)
    delivery = api.post("/deliveries", json=_manifest_json(folder)).json()["id"]
    with ThreadPoolExecutor(4) as pool:
        plans = list(pool.map(lambda _: api.post(f"/deliveries/{delivery}/files/0/upload").json(), range(4)))
    upload_ids = {parse_qs(urlparse(plan["urls"][0]["url"]).query)["uploadId"][0] for plan in plans}
    assert len(upload_ids) == 1
    assert httpx.put(plans[0]["urls"][0]["url"], content=(folder / "a.mp4").read_bytes()).status_code == 200
    assert api.post(f"/deliveries/{delivery}/files/0/complete").json()["state"] == "uploaded"
    api.close()

"""Partners are strangers: B can never read, list, complete or revoke A's things, through any endpoint or URL."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from sqlalchemy import select

from alliance.models import Recording
from partners.client import deliver
from partners.folder import build_manifest, load_metadata
from partners.uploads import PartSpec, Uploads
from tests.partners.conftest import make_folder


def test_partner_b_cannot_touch_anything_of_partner_a(service, media, tmp_path):
    done = deliver(make_folder(tmp_path / "a1", media, {"walk.mp4": media.good}), service.url, service.a.token)
    with service.catalog.session() as session:
        recording = session.scalar(select(Recording.id).where(Recording.delivery_id == done.delivery_id))
    assert done.status == "accepted" and recording

    # an open delivery of A with a presigned part URL in flight
    folder = make_folder(tmp_path / "a2", media, {"desk.mp4": media.good2})
    a = httpx.Client(base_url=service.url, headers=service.headers(service.a), timeout=30)
    b = httpx.Client(base_url=service.url, headers=service.headers(service.b), timeout=30)
    opened = a.post("/deliveries", content=build_manifest(folder, load_metadata(folder), "partner-a").canonical_json())
    open_id = opened.json()["id"]
    part_url = a.post(f"/deliveries/{open_id}/files/0/upload").json()["urls"][0]["url"]

    unknown = "d" + "0" * 31
    for delivery in (done.delivery_id, open_id, unknown):
        attempts = [b.get(f"/deliveries/{delivery}"), b.post(f"/deliveries/{delivery}/files/0/upload"),
                    b.post(f"/deliveries/{delivery}/files/0/complete"), b.post(f"/deliveries/{delivery}/complete"),
                    b.get(f"/deliveries/{delivery}/report"), b.get(f"/deliveries/{delivery}/report.json")]
        for response in attempts:
            assert response.status_code == 404, (response.request.url, response.text)
            # a foreign id and a made-up one answer alike, so ids leak nothing
            assert response.json()["detail"].replace(delivery, "ID") in {
                "no delivery ID for partner partner-b"}, response.text
    for rid in (recording, "f" * 64):
        assert b.get(f"/recordings/{rid}").status_code == 404
        refused = b.post(f"/recordings/{rid}/revoke", json={"reason": "not mine"})
        assert refused.status_code == 404 and refused.json()["error"] == "recording_not_found"
    assert b.get("/deliveries").json() == [] and b.get("/recordings").json() == []
    assert all(event["action"] != "open_delivery" or event["status"] != 201 for event in b.get("/audit").json())
    assert {e["target"] for e in a.get("/audit").json()} >= {done.delivery_id, open_id}
    # B cannot open a delivery in A's name, nor reach A's delivery by re-sending A's manifest
    stolen = json.loads(opened.request.content)
    assert b.post("/deliveries", json=stolen).json()["error"] == "partner_mismatch"
    stolen["partner"] = "partner-b"
    mine = b.post("/deliveries", json=stolen).json()
    assert mine["id"] != open_id and mine["partner"] == "partner-b"

    # presigned URLs are scoped to one key, one upload, one part and one length; and they expire
    data = (folder / "desk.mp4").read_bytes()
    other_key = part_url.replace("/partner-a/", "/partner-b/")
    assert httpx.put(other_key, content=data).status_code == 403
    assert httpx.put(part_url.replace("partNumber=1", "partNumber=2"), content=data).status_code == 403
    assert httpx.put(part_url, content=data[:-1]).status_code == 403  # the length is signed
    short = Uploads(service.store, b"unused", service.config.part_size)
    upload_id = short.begin("landing/partner-a/expiry/files/x.mp4")
    expiring = short.part_url("landing/partner-a/expiry/files/x.mp4", upload_id, PartSpec(1, 4), 1, "", "")
    time.sleep(2.1)
    assert httpx.put(expiring, content=b"late").status_code == 403

    # A's things are untouched by all of the above, and A can still finish and revoke its own
    assert httpx.put(part_url, content=data).status_code == 200
    assert a.get(f"/deliveries/{open_id}").json()["status"] == "open"
    revoked = a.post(f"/recordings/{recording}/revoke", json={"reason": "consent withdrawn by the wearer"}).json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"] and revoked["revoke_reason"].startswith("consent")
    assert a.post(f"/recordings/{recording}/revoke", json={"reason": "again"}).json()["revoke_reason"].startswith(
        "consent")  # revoking twice keeps the first time and reason
    a.close()
    b.close()


def test_tokens_are_hashed_revocable_and_rate_limited(file_service):
    from alliance.models import ApiToken
    from partners.accounts import revoke_tokens, rotate_token
    from partners.errors import RateLimited
    from partners.ratelimit import RateLimiter

    url = file_service.url
    assert httpx.get(f"{url}/me", headers=file_service.headers(file_service.a)).json()["partner"] == "partner-a"
    with file_service.catalog.session() as session:
        stored = {t.secret_sha256 for t in session.scalars(select(ApiToken))}
    assert not any(file_service.a.token.split("_")[-1] in s for s in stored)  # only hashes are kept
    for bad in ("", "Bearer nonsense", "Bearer alk_0000000000000000_" + "x" * 43, "Basic dXNlcjpwYXNz"):
        response = httpx.get(f"{url}/me", headers={"Authorization": bad} if bad else {})
        assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    new = rotate_token(file_service.catalog, "partner-a")
    assert httpx.get(f"{url}/me", headers=file_service.headers(file_service.a)).status_code == 401
    assert httpx.get(f"{url}/me", headers={"Authorization": f"Bearer {new.token}"}).status_code == 200
    revoke_tokens(file_service.catalog, "partner-a")
    assert httpx.get(f"{url}/me", headers={"Authorization": f"Bearer {new.token}"}).status_code == 401

    limiter = RateLimiter(rate_per_s=1.0, burst=3)
    for _ in range(3):
        limiter.take("token:x")
    with pytest.raises(RateLimited) as caught:
        limiter.take("token:x")
    assert caught.value.status_code == 429 and caught.value.retry_after_s > 0
    limiter.take("token:y")  # another token has its own bucket


def test_a_file_store_service_takes_parts_on_its_own_signed_endpoint(file_service, media, tmp_path):
    folder = make_folder(tmp_path / "local", media, {"walk.mp4": media.good, "walk.imu.csv": media.imu})
    verdict = deliver(folder, file_service.url, file_service.a.token)
    assert verdict.status == "accepted", verdict.problems
    assert not list(file_service.store.list("uploads/"))  # staging parts are gone once assembled

    folder2 = make_folder(tmp_path / "local2", media, {"desk.mp4": media.good2})
    a = httpx.Client(base_url=file_service.url, headers=file_service.headers(file_service.a), timeout=30)
    opened = a.post("/deliveries", content=build_manifest(folder2, load_metadata(folder2), "partner-a")
                    .canonical_json()).json()
    plan = a.post(f"/deliveries/{opened['id']}/files/0/upload").json()
    assert plan["parts_total"] == len(plan["urls"]) > 1
    first = plan["urls"][0]
    data = (folder2 / "desk.mp4").read_bytes()[: first["bytes"]]
    assert httpx.put(first["url"].replace("sig=", "sig=0"), content=data).status_code == 422
    tampered = first["url"].replace(f"/{first['part']}?", "/2?")
    assert httpx.put(tampered, content=data).json()["error"] == "bad_signature"
    assert httpx.put(first["url"], content=data + b"x").json()["error"] == "oversize_upload"
    assert httpx.put(first["url"], content=data[:-1]).json()["error"] == "size_mismatch"
    assert httpx.put(first["url"], content=data).status_code == 200
    b = httpx.Client(base_url=file_service.url, headers=file_service.headers(file_service.b), timeout=30)
    assert b.post(f"/deliveries/{opened['id']}/files/0/upload").status_code == 404
    assert a.post(f"/deliveries/{opened['id']}/files/0/complete").json()["error"] == "parts_missing"
    a.close()
    b.close()

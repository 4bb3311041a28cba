"""The delivery service against hostile or unlucky clients: racing opens, slow connections, revoked tokens."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from alliance.models import Delivery, DeliveryDetail, DeliveryFile
from partners.folder import build_manifest, load_metadata
from tests.partners.conftest import METADATA, make_folder


def test_two_manifests_racing_for_one_delivery_name_get_one_winner(service, media, tmp_path):
    folder = make_folder(tmp_path / "race", media, {"a.mp4": media.good, "b.mp4": media.good2})
    base = json.loads(build_manifest(folder, load_metadata(folder), "partner-a").canonical_json())
    outcomes = []
    with httpx.Client(base_url=service.url, headers=service.headers(service.a), timeout=30) as http:
        for round_ in range(12):
            name = f"race-{round_}"
            manifests = [{**base, "delivery": name, "notes": "first"},
                         {**base, "delivery": name, "recordings": base["recordings"][:1]}]
            barrier = threading.Barrier(2)
            answers: list = [None, None]

            def send(i: int) -> None:
                barrier.wait()
                answers[i] = http.post("/deliveries", content=json.dumps(manifests[i]))

            threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = sorted(a.status_code for a in answers)
            outcomes.append(codes)
            loser = next(a for a in answers if a.status_code == 409)
            assert loser.json()["error"] == "delivery_conflict" and "new \"delivery\" name" in loser.json()["detail"]
            winner = next(a for a in answers if a.status_code == 201).json()
            with service.catalog.session() as session:
                delivery = session.get(Delivery, winner["id"])
                detail = session.get(DeliveryDetail, winner["id"])
                paths = session.scalars(select(DeliveryFile.path).where(DeliveryFile.delivery_id == winner["id"])
                                        .order_by(DeliveryFile.idx)).all()
                stored = service.store.get_bytes(detail.manifest_key)
                assert hashlib.sha256(stored).hexdigest() == delivery.manifest_sha256
                assert [r["path"] for r in json.loads(stored)["recordings"]] == paths
    assert outcomes == [[201, 409]] * 12


def test_a_delivery_name_in_any_script_is_kept_as_given(file_service, media, tmp_path):
    from partners.client import deliver

    name = "Дом — 家の記録 2026"
    folder = make_folder(tmp_path / "unicode", media, {"a.mp4": media.good}, f'delivery = "{name}"\n' + METADATA)
    verdict = deliver(folder, file_service.url, file_service.a.token)
    assert verdict.status == "accepted" and verdict.delivery == name
    keys = [p.relative_to(file_service.store.root).as_posix() for p in file_service.store.root.rglob("*")
            if p.is_file()]
    assert keys and all(k.isascii() for k in keys)
    listed = httpx.get(f"{file_service.url}/deliveries", headers=file_service.headers(file_service.a)).json()
    assert [d["delivery"] for d in listed] == [name]


# --------------------------------------------------------------------------- slow and idle connections

SLOW = dict(header_timeout_s=1.0, body_idle_timeout_s=1.0, body_grace_s=1.5, min_body_rate=2000, keep_alive_s=1,
            max_headers=50)


@pytest.fixture
def guarded(tmp_path):
    """The service over file:// with short deadlines, so slow clients are cut off within seconds."""
    from alliance.catalog import Catalog
    from alliance.settings import Settings
    from alliance.store import LocalStore
    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    settings = Settings(home=tmp_path / ".alliance")
    catalog = Catalog(settings.effective_catalog_url)
    catalog.upgrade()
    token = add_partner(catalog, "partner-a").token
    config = ServiceConfig(part_size=1 << 10, rate_per_s=1000.0, rate_burst=5000, **SLOW)
    with serving(settings, config, store=LocalStore(tmp_path / "store"), catalog=catalog) as running:
        yield running, token
    catalog.dispose()


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it said before."""
    sock.settimeout(0.2)
    deadline, said = time.monotonic() + seconds, b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionError:
            return True, said
        if not chunk:
            return True, said
        said += chunk
    return False, said


def test_slow_headers_idle_connections_and_slow_bodies_are_cut_off(guarded):
    running, token = guarded
    start = time.monotonic()
    slow = [socket.create_connection((running.host, running.port)) for _ in range(30)]
    idle = [socket.create_connection((running.host, running.port)) for _ in range(5)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    assert httpx.get(f"{running.url}/healthz").status_code == 200  # the service still answers meanwhile
    for sock in slow + idle:
        closed, said = _closed_within(sock, 4.0)
        assert closed, "a slow or idle connection was held open"
        assert said == b"" or b"408" in said.split(b"\r\n", 1)[0]
        sock.close()
    assert time.monotonic() - start < 6.0

    body = b"x" * 5000  # a manifest trickled at 10 B/s
    sock = socket.create_connection((running.host, running.port))
    sock.sendall(b"POST /deliveries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
    started = time.monotonic()
    said = b""
    for i in range(60):
        try:
            sock.sendall(body[i:i + 1])
        except OSError:
            break
        closed, more = _closed_within(sock, 0.1)
        said += more
        if closed:
            break
    assert time.monotonic() - started < 5.0 and b"408" in said.split(b"\r\n", 1)[0] and b"body_too_slow" in said
    sock.close()

    sock = socket.create_connection((running.host, running.port))  # a body that stops
    sock.sendall(b"POST /deliveries HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\"")
    closed, said = _closed_within(sock, 4.0)
    assert closed and b"body_timeout" in said or b"401" in said.split(b"\r\n", 1)[0]
    sock.close()


def test_too_many_or_too_large_headers_are_refused(guarded):
    running, _ = guarded
    many = {f"x-h{i}": "1" for i in range(60)}
    answer = httpx.get(f"{running.url}/healthz", headers=many)
    assert answer.status_code == 431 and answer.json()["error"] == "too_many_headers"
    answer = httpx.get(f"{running.url}/healthz", headers={"x-big": "a" * (40 << 10)})
    assert answer.status_code == 431 and answer.json()["error"] == "too_many_headers"  # h11's limit or the app's
    assert answer.headers["x-content-type-options"] == "nosniff"

    sock = socket.create_connection((running.host, running.port))  # trickled: h11's buffer limit meets it first
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * (40 << 10) + b"\r\n\r\n"
    for start in range(0, len(request), 1024):
        try:
            sock.sendall(request[start:start + 1024])
        except OSError:  # the service answered and closed before the rest arrived
            break
    said = _closed_within(sock, 4.0)[1]
    sock.close()
    head, _, body = said.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"x-content-type-options: nosniff" in head, said[:300]
    assert json.loads(body)["error"] == "too_many_headers"


def test_security_headers_on_every_response_and_secrets_redacted_from_access_logs(guarded):
    import logging

    from partners.server import RedactSecrets

    running, token = guarded
    for path in ("/healthz", "/docs", "/deliveries"):
        answer = httpx.get(f"{running.url}{path}")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert "script-src" not in httpx.get(f"{running.url}/healthz").headers["content-security-policy"]

    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', (
        "127.0.0.1:5000", "PUT", f"/uploads/d1/0/1?expires=99&sig={'ab' * 32}&token={token}", "1.1", 200), None)
    s3 = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, "%s", (
        "/b/k?uploadId=1&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef",), None)
    for entry in (record, s3):
        RedactSecrets().filter(entry)
    line = record.getMessage() + s3.getMessage()
    assert "ab" * 32 not in line and token not in line and token.split("_")[-1] not in line
    assert "deadbeef" not in line and "AKIA" not in line and "sig=***" in line and "expires=99" in line


# --------------------------------------------------------------------------- revoked tokens end their part URLs


def _plan(service, folder, token) -> tuple[dict, bytes]:
    manifest = build_manifest(folder, load_metadata(folder), "partner-a")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token.token}"}, timeout=30) as http:
        opened = http.post("/deliveries", content=manifest.canonical_json()).json()
        plan = http.post(f"/deliveries/{opened['id']}/files/0/upload").json()
    return plan, (folder / plan["path"]).read_bytes()


@pytest.mark.parametrize("how", ["revoke", "rotate"])
def test_revoking_or_rotating_a_token_ends_its_part_urls_at_once(file_service, media, tmp_path, how):
    from partners.accounts import revoke_tokens, rotate_token

    folder = make_folder(tmp_path / how, media, {"a.mp4": media.good})
    plan, data = _plan(file_service, folder, file_service.a)
    first, second = plan["urls"][:2]
    assert httpx.put(first["url"], content=data[:first["bytes"]]).status_code == 200
    if how == "revoke":
        revoke_tokens(file_service.catalog, "partner-a", file_service.a.token_id, store=file_service.store)
    else:
        fresh = rotate_token(file_service.catalog, "partner-a", store=file_service.store)
    refused = httpx.put(second["url"], content=data[first["bytes"]:first["bytes"] + second["bytes"]])
    assert refused.status_code == 403 and refused.json()["error"] == "token_revoked"
    if how == "rotate":  # the new token resumes: the part that arrived before stays
        plan = httpx.post(f"{file_service.url}/deliveries/{plan_delivery(file_service, fresh)}/files/0/upload",
                          headers={"Authorization": f"Bearer {fresh.token}"}).json()
        assert plan["done"] == [1] and all("tok=" + fresh.token_id in u["url"] for u in plan["urls"])


def plan_delivery(service, token) -> str:
    return httpx.get(f"{service.url}/deliveries", headers={"Authorization": f"Bearer {token.token}"}).json()[0]["id"]


def test_revoking_a_token_aborts_the_partners_open_s3_uploads(service, media, tmp_path):
    from partners.accounts import revoke_tokens

    folder = make_folder(tmp_path / "s3", media, {"long.mp4": media.big})
    plan, data = _plan(service, folder, service.a)
    first, second = plan["urls"][:2]
    assert httpx.put(first["url"], content=data[:first["bytes"]]).status_code == 200
    revoke_tokens(service.catalog, "partner-a", store=service.store)
    refused = httpx.put(second["url"], content=data[first["bytes"]:first["bytes"] + second["bytes"]])
    assert refused.status_code in (403, 404), refused.text
    with service.catalog.session() as session:
        assert session.scalars(select(DeliveryFile.upload_id).where(DeliveryFile.upload_id.is_not(None))).all() == []


def test_identical_bytes_from_two_partners_tell_neither_about_the_other(file_service, media, tmp_path):
    from alliance.models import AuditEvent, Recording
    from partners.client import deliver

    first = make_folder(tmp_path / "b", media, {"walk.mp4": media.good})
    second = make_folder(tmp_path / "a", media, {"mine.mp4": media.good})
    assert deliver(first, file_service.url, file_service.b.token).status == "accepted"
    verdict = deliver(second, file_service.url, file_service.a.token)
    assert verdict.status == "accepted" and verdict.problems == [] and verdict.reasons == {}
    sha = hashlib.sha256(media.good.read_bytes()).hexdigest()
    headers = file_service.headers(file_service.a)
    mine = httpx.get(f"{file_service.url}/recordings/{sha}", headers=headers).json()
    assert mine["delivery_id"] == verdict.delivery_id and mine["status"] == "accepted" and "walk" not in mine["key"]
    assert [r["id"] for r in httpx.get(f"{file_service.url}/recordings", headers=headers).json()] == [sha]
    report = httpx.get(f"{file_service.url}/deliveries/{verdict.delivery_id}/report.json", headers=headers).text
    assert "partner-b" not in report and "walk.mp4" not in report and "duplicate" not in report
    with file_service.catalog.session() as session:
        assert session.scalar(select(Recording.partner_id).where(Recording.id == sha)) == "partner-b"  # stored once
        credits = {e.partner_id: e.detail["credit"] for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action == "recording.credit"))}
    assert credits == {"partner-b": "new", "partner-a": "deduplicated"}


def test_an_abandoned_delivery_expires_its_parts_and_reopens_when_sent_again(tmp_path, media):
    from alliance.catalog import Catalog
    from alliance.settings import Settings
    from alliance.store import LocalStore
    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    settings = Settings(home=tmp_path / ".alliance")
    catalog = Catalog(settings.effective_catalog_url)
    catalog.upgrade()
    who = add_partner(catalog, "partner-a")
    store = LocalStore(tmp_path / "store")
    config = ServiceConfig(part_size=1 << 10, open_delivery_ttl_s=2.0, reap_interval_s=0.25)
    folder = make_folder(tmp_path / "gone", media, {"a.mp4": media.good})
    manifest = build_manifest(folder, load_metadata(folder), "partner-a").canonical_json()
    with serving(settings, config, store=store, catalog=catalog) as running, httpx.Client(
            base_url=running.url, headers={"Authorization": f"Bearer {who.token}"}, timeout=30) as http:
        opened = http.post("/deliveries", content=manifest).json()
        plan = http.post(f"/deliveries/{opened['id']}/files/0/upload").json()
        data = (folder / "a.mp4").read_bytes()
        assert httpx.put(plan["urls"][0]["url"], content=data[:plan["urls"][0]["bytes"]]).status_code == 200
        deadline = time.monotonic() + 10
        while (status := http.get(f"/deliveries/{opened['id']}").json())["status"] == "open":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert status["status"] == "expired" and "alliance deliver" in status["summary"]["expired"]
        assert not (store.root / "uploads" / "partner-a" / opened["delivery"]).exists()
        again = http.post("/deliveries", content=manifest)
        assert again.status_code == 200 and again.json()["status"] == "open"
        assert http.post(f"/deliveries/{opened['id']}/files/0/upload").json()["done"] == []
    catalog.dispose()


def test_a_part_damaged_on_the_way_is_refused_when_it_arrives(file_service, media, tmp_path):
    import base64

    folder = make_folder(tmp_path / "damaged", media, {"a.mp4": media.good})
    plan, data = _plan(file_service, folder, file_service.a)
    first = plan["urls"][0]
    part = data[:first["bytes"]]
    checksum = base64.b64encode(hashlib.sha256(part).digest()).decode()
    damaged = bytes([part[0] ^ 1]) + part[1:]
    refused = httpx.put(first["url"], content=damaged, headers={"x-amz-checksum-sha256": checksum})
    assert refused.status_code == 400 and refused.json()["error"] == "part_checksum_mismatch"
    assert list(file_service.store.list("uploads/")) == []
    assert httpx.put(first["url"], content=part, headers={"x-amz-checksum-sha256": checksum}).status_code == 200

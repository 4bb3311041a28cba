"""Per-part integrity on S3: each presigned part URL carries its part's SHA-256, and the store (SeaweedFS 4.x here)
refuses a part damaged on the way as it arrives, and a complete whose checksums differ from the parts it holds."""

from __future__ import annotations

import base64
import hashlib

import httpx

from partners.client import deliver
from partners.folder import build_manifest, load_metadata, part_checksums
from partners.contract import file_key
from tests.partners.conftest import make_folder


def _open(service, folder) -> tuple[httpx.Client, str]:
    api = httpx.Client(base_url=service.url, headers=service.headers(service.a), timeout=30)
    manifest = build_manifest(folder, load_metadata(folder), "partner-a").canonical_json()
    opened = api.post("/deliveries", content=manifest, headers={"Content-Type": "application/json"})
    assert opened.status_code == 201, opened.text
    return api, opened.json()["id"]


def test_a_part_damaged_on_the_way_to_s3_is_refused_by_the_store(service, media, tmp_path):
    folder = make_folder(tmp_path / "damaged", media, {"long.mp4": media.big})
    api, delivery = _open(service, folder)
    part_size = service.config.part_size
    sums = part_checksums(folder, "long.mp4", part_size)
    assert len(sums) == 3

    wrong_size = api.post(f"/deliveries/{delivery}/files/0/upload", json={"part_size": 1 << 20, "sha256": sums})
    assert wrong_size.status_code == 409 and wrong_size.json()["error"] == "part_size_mismatch"
    assert wrong_size.json()["problems"][0]["part_size"] == part_size

    plan = api.post(f"/deliveries/{delivery}/files/0/upload", json={"part_size": part_size, "sha256": sums}).json()
    first = plan["urls"][0]
    assert "x-amz-checksum-sha256" in first["url"].lower()  # signed into the URL: one checksum per URL
    data = media.big.read_bytes()
    part = data[:first["bytes"]]
    damaged = part[:1000] + bytes([part[1000] ^ 1]) + part[1001:]
    refused = httpx.put(first["url"], content=damaged, headers={"x-amz-checksum-sha256": sums[0]})
    assert refused.status_code == 400 and "BadDigest" in refused.text
    # the checksum cannot be dropped or swapped for the damaged bytes' own: it is part of the signature
    assert httpx.put(first["url"], content=damaged).status_code == 403
    forged = base64.b64encode(hashlib.sha256(damaged).digest()).decode()
    assert httpx.put(first["url"], content=damaged, headers={"x-amz-checksum-sha256": forged}).status_code == 403
    again = api.post(f"/deliveries/{delivery}/files/0/upload", json={"part_size": part_size, "sha256": sums})
    assert again.json()["done"] == []  # nothing of the damaged part was kept

    # the intact part goes through; complete with a checksum that is not the stored part's is refused
    assert httpx.put(first["url"], content=part, headers={"x-amz-checksum-sha256": sums[0]}).status_code == 200
    for url in plan["urls"][1:]:
        start = (url["part"] - 1) * part_size
        ok = httpx.put(url["url"], content=data[start:start + url["bytes"]],
                       headers={"x-amz-checksum-sha256": sums[url["part"] - 1]})
        assert ok.status_code == 200, ok.text
    lying = api.post(f"/deliveries/{delivery}/files/0/complete",
                     json={"part_size": part_size, "sha256": [sums[1], *sums[1:]]})
    assert lying.status_code == 409 and lying.json()["error"] == "part_checksum_mismatch"
    done = api.post(f"/deliveries/{delivery}/files/0/complete", json={"part_size": part_size, "sha256": sums})
    assert done.status_code == 200 and done.json()["state"] == "uploaded"
    name = api.get(f"/deliveries/{delivery}").json()["delivery"]
    assert service.store.get_bytes(file_key("partner-a", name, "long.mp4")) == data
    api.close()


def test_the_cli_learns_the_services_part_size_and_delivers_with_checksums(service, media, tmp_path):
    folder = make_folder(tmp_path / "cli", media, {"long.mp4": media.big, "a.mp4": media.good})
    verdict = deliver(folder, service.url, service.a.token)
    assert verdict.status == "accepted", verdict.problems
    assert service.store.get_bytes(file_key("partner-a", verdict.delivery, "long.mp4")) == media.big.read_bytes()

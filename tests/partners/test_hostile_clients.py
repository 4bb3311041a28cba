"""The delivery service against hostile or unlucky clients: racing opens, slow connections, revoked tokens."""

from __future__ import annotations

import hashlib
import json
import threading

import httpx
from sqlalchemy import select

from alliance.models import Delivery, DeliveryDetail, DeliveryFile
from partners.client import build_manifest, load_metadata
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

"""Fixtures of the security tests: the delivery service on loopback with partner A's things in it, and a stranger B."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alliance.catalog import Catalog
from alliance.settings import S3Settings, Settings
from alliance.store import LocalStore, ObjectStore, S3Store
from partners.samples import delivery_toml
from ingest.synth import ImuSpec, VideoSpec, imu_table, write_imu_csv, write_video
from partners.accounts import IssuedToken, add_partner
from partners.server import serving
from partners.service import ServiceConfig

GLASSES = {"kind": "glasses", "model": "SecretGlass 9", "mounting": "head"}
METADATA = delivery_toml(license="CC-BY-4.0", device=GLASSES, scope=("pretraining",), expires="2099-12-31",
                         imu_units=False)
UPLOAD_SECRET = "security-tests-know-this-secret-to-forge-expired-urls"


def partner_folder(root: Path, seed: int, delivery: str) -> Path:
    """A partner's folder: one recording (2 s, 64x64) with its IMU, and its delivery.toml."""
    root.mkdir(parents=True, exist_ok=True)
    write_video(root / f"walk-{seed}.mp4", VideoSpec(frames=20, seed=seed))
    write_imu_csv(root / f"walk-{seed}.imu.csv", imu_table(ImuSpec(seconds=2.0, rate_hz=100.0)))
    (root / "delivery.toml").write_text(f'delivery = "{delivery}"\n' + METADATA)
    return root


@dataclass
class Deployment:
    """A running service, its store and catalog, partner A (with an accepted and an open delivery) and B."""

    url: str
    store: ObjectStore
    catalog: Catalog
    config: ServiceConfig
    a: IssuedToken
    b: IssuedToken
    folder_a: Path
    folder_b: Path
    facts: dict = field(default_factory=dict)  # A's ids, paths and URLs, filled in by the fixture


def _deploy(tmp_path: Path, store: ObjectStore, catalog_url: str, config: ServiceConfig):
    import httpx

    from partners.client import deliver
    from partners.folder import build_manifest, load_metadata

    catalog = Catalog(catalog_url)
    catalog.upgrade()
    a = add_partner(catalog, "acme-secret", "Acme")
    b = add_partner(catalog, "mallory", "Mallory")
    settings = Settings(home=tmp_path / ".alliance", catalog_url=catalog_url)
    with serving(settings, config, store=store, catalog=catalog) as running:
        folder_a = partner_folder(tmp_path / "a", 1, "acme-batch-7")
        folder_b = partner_folder(tmp_path / "b", 2, "mallory-batch")
        done = deliver(folder_a, running.url, a.token)
        assert done.status == "accepted", done.problems
        open_folder = partner_folder(tmp_path / "a-open", 3, "acme-open-batch")
        with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {a.token}"}, timeout=30) as http:
            opened = http.post("/deliveries", content=build_manifest(
                open_folder, load_metadata(open_folder), a.partner).canonical_json()).json()
            plan = http.post(f"/deliveries/{opened['id']}/files/0/upload").json()
            recordings = http.get("/recordings").json()
        deployment = Deployment(running.url, store, catalog, config, a, b, folder_a, folder_b)
        deployment.facts = {
            "accepted_delivery": done.delivery_id, "open_delivery": opened["id"],
            "recording": recordings[0]["id"], "recording_key": recordings[0]["key"],
            "part_url": plan["urls"][0]["url"], "part_bytes": plan["urls"][0]["bytes"],
            "open_folder": open_folder, "open_file": opened["files"][0]["path"],
            "secrets": {done.delivery_id, opened["id"], recordings[0]["id"], "acme-batch-7", "acme-open-batch",
                        "walk-1.mp4", "walk-3.mp4", "SecretGlass 9", a.token_id, a.token.split("_")[-1]},
        }
        yield deployment
    catalog.dispose()


@pytest.fixture(scope="module")
def file_deployment(tmp_path_factory):
    """Over a file:// store: parts go to the service's own signed endpoint."""
    tmp_path = tmp_path_factory.mktemp("file-deployment")
    config = ServiceConfig(part_size=64 << 10, rate_per_s=5000.0, rate_burst=50_000, upload_secret=UPLOAD_SECRET,
                           probe_timeout_s=20.0)
    yield from _deploy(tmp_path, LocalStore(tmp_path / "store"), f"sqlite:///{tmp_path / 'catalog.db'}", config)


@pytest.fixture(scope="module")
def s3_deployment(tmp_path_factory, seaweed, postgres_server):
    """Over the real SeaweedFS S3 server (presigned part URLs) and PostgreSQL."""
    tmp_path = tmp_path_factory.mktemp("s3-deployment")
    postgres_url = postgres_server.create_database("sec")
    who = seaweed.identity("admin")
    store = S3Store(f"s3://alliance/sec-{uuid.uuid4().hex[:12]}", S3Settings(
        endpoint_url=seaweed.endpoint_url, access_key_id=who.access_key, secret_access_key=who.secret_key,
        max_attempts=3))
    store.ensure_bucket()
    config = ServiceConfig(part_size=5 << 20, rate_per_s=5000.0, rate_burst=50_000, probe_timeout_s=20.0)
    yield from _deploy(tmp_path, store, postgres_url, config)

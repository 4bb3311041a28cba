"""Fixtures of the partner tests: tiny media, partner folders, and the real service on loopback over SeaweedFS."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from alliance.catalog import Catalog
from alliance.settings import S3Settings, Settings
from alliance.store import LocalStore, ObjectStore, S3Store
from ingest.synth import ImuSpec, VideoSpec, imu_table, write_imu_csv, write_video
from partners.accounts import IssuedToken, add_partner
from partners.server import serving
from partners.service import ServiceConfig

METADATA = """
license = "CC-BY-4.0"
notes = "test delivery"
[consent]
scope = ["pretraining", "evaluation"]
expires = 2099-12-31
faces_allowed = false
[device]
kind = "glasses"
model = "TestGlass 1"
mounting = "head"
[sensors.imu]
rate_hz = 100
units = {ax = "m/s^2", ay = "m/s^2", az = "m/s^2", gx = "rad/s", gy = "rad/s", gz = "rad/s"}
"""


@dataclass(frozen=True)
class Media:
    """Prebuilt files the tests copy into partner folders."""

    good: Path  # 64x64, 20 frames at 10 fps
    good2: Path
    imu: Path  # 2 s at 100 Hz
    big: Path  # about 11 MB: three 5 MiB parts


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Media:
    root = tmp_path_factory.mktemp("media")
    good = write_video(root / "good.mp4", VideoSpec(frames=20, seed=1))
    good2 = write_video(root / "good2.mp4", VideoSpec(frames=20, seed=2, scene="pan"))
    imu = write_imu_csv(root / "good.imu.csv", imu_table(ImuSpec(seconds=2.0, rate_hz=100.0)))
    big = write_video(root / "big.mp4", VideoSpec(width=256, height=256, frames=260, fps=10, scene="noise"))
    return Media(good, good2, imu, big)


def make_folder(root: Path, media: Media, files: dict[str, Path | bytes], metadata: str = METADATA) -> Path:
    """A partner folder: each name gets a copy of a media file or the given bytes, plus delivery.toml."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
        else:
            shutil.copyfile(source, target)
    (root / "delivery.toml").write_text(metadata)
    return root


@dataclass
class Service:
    """The running service with its store, catalog and two partners who do not know each other."""

    url: str
    store: ObjectStore
    catalog: Catalog
    a: IssuedToken
    b: IssuedToken
    config: ServiceConfig

    def headers(self, who: IssuedToken) -> dict[str, str]:
        return {"Authorization": f"Bearer {who.token}"}


FAST = ServiceConfig(part_size=5 << 20, rate_per_s=1000.0, rate_burst=5000, max_file_bytes=64 << 20,
                     max_delivery_bytes=128 << 20, probe_timeout_s=20.0)


def _partners(catalog_url: str) -> tuple[Catalog, IssuedToken, IssuedToken]:
    catalog = Catalog(catalog_url)
    catalog.upgrade()
    a = add_partner(catalog, "partner-a", "Partner A")
    b = add_partner(catalog, "partner-b", "Partner B")
    return catalog, a, b


@pytest.fixture
def s3_service_store(seaweed) -> S3Store:
    who = seaweed.identity("admin")
    store = S3Store(f"s3://alliance/p-{uuid.uuid4().hex[:12]}", S3Settings(
        endpoint_url=seaweed.endpoint_url, access_key_id=who.access_key, secret_access_key=who.secret_key,
        max_attempts=3))
    store.ensure_bucket()
    return store


@pytest.fixture
def service(s3_service_store, catalog_url, tmp_path) -> Service:
    """The service on loopback over the real SeaweedFS store and the catalog (SQLite, then PostgreSQL)."""
    settings = Settings(home=tmp_path / ".alliance", catalog_url=catalog_url)
    catalog, a, b = _partners(catalog_url)
    with serving(settings, FAST, store=s3_service_store, catalog=catalog) as running:
        yield Service(running.url, s3_service_store, catalog, a, b, FAST)
    catalog.dispose()


@pytest.fixture
def file_service(tmp_path) -> Service:
    """The service over a file:// store: parts go to its own signed upload endpoint (1 KiB parts)."""
    config = ServiceConfig(part_size=1 << 10, rate_per_s=1000.0, rate_burst=5000, max_file_bytes=8 << 20)
    settings = Settings(home=tmp_path / ".alliance")
    store = LocalStore(tmp_path / "store")
    catalog, a, b = _partners(settings.effective_catalog_url)
    with serving(settings, config, store=store, catalog=catalog) as running:
        yield Service(running.url, store, catalog, a, b, config)
    catalog.dispose()

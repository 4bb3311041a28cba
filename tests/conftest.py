"""Fixtures with real servers: SeaweedFS (S3) and PostgreSQL 15, started once per session, never skipped."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from alliance.catalog import Catalog
from alliance.devservers import Postgres, SeaweedS3
from alliance.settings import S3Settings, Settings
from alliance.store import LocalStore, ObjectStore, S3Store

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> SeaweedS3:
    """A real S3 server with two identities: `admin` (all rights) and `reader` (Read, List)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()  # a failure raises with the server's own log: the test fails, it is not skipped
    yield server
    server.stop()


def s3_settings(server: SeaweedS3, identity: str = "admin") -> S3Settings:
    who = server.identity(identity)
    return S3Settings(endpoint_url=server.endpoint_url, access_key_id=who.access_key, secret_access_key=who.secret_key,
                      max_attempts=3)


@pytest.fixture
def s3_store(seaweed) -> S3Store:
    """A fresh prefix in the `alliance` bucket, as the admin identity."""
    store = S3Store(f"s3://alliance/t-{uuid.uuid4().hex[:12]}", s3_settings(seaweed))
    store.ensure_bucket()
    return store


@pytest.fixture
def file_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> ObjectStore:
    """The same tests against file:// and the real SeaweedFS server."""
    if request.param == "file":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture(scope="session")
def postgres_server() -> Postgres:
    # not under pytest's tmp dir: that is private to root, and the server runs as the `postgres` user
    workdir = Path(tempfile.mkdtemp(prefix="alliance-pg-"))
    server = Postgres(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return postgres_server.create_database("t")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path) -> str:
    """The same tests against SQLite and the real PostgreSQL 15 server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def catalog(catalog_url) -> Catalog:
    cat = Catalog(catalog_url)
    cat.upgrade()
    yield cat
    cat.dispose()


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Embedded defaults rooted in this test's tmp dir."""
    return Settings(home=tmp_path / ".alliance")

"""The catalog: the same tests on SQLite and on a real PostgreSQL 15; migrations match the models."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from alliance.catalog import Catalog
from alliance.errors import CatalogError
from alliance.models import Base, DatasetVersion, Delivery, Partner, Recording, Run


def test_upgrade_creates_every_table_and_is_idempotent(catalog):
    assert catalog.current_revision() == catalog.head_revision()
    assert set(Base.metadata.tables) <= set(catalog.tables())
    assert catalog.upgrade() == catalog.head_revision()  # a second upgrade changes nothing
    catalog.ensure_current()


def test_migrations_produce_exactly_the_models(catalog):
    with catalog.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_rows_round_trip_with_foreign_keys(catalog):
    with catalog.session() as session:
        session.add(Partner(id="glassco", display_name="Glass Co"))
        session.flush()  # no relationship() between the models: parents are flushed first explicitly
        session.add(Delivery(id="d1", partner_id="glassco", contract_version="1.0"))
        session.add(Run(id="ingest-1", kind="ingest", config={"clip_seconds": 4}))
        session.flush()
        session.add(Recording(id="a" * 64, partner_id="glassco", delivery_id="d1", key="landing/glassco/d1/files/x.mp4",
                              bytes=123, media_type="video/mp4"))
        session.add(DatasetVersion(name="ego", version=1, manifest_key="datasets/ego/v1/manifest.json", run_id="ingest-1"))
    with catalog.session() as session:
        recording = session.get(Recording, "a" * 64)
        assert recording.status == "accepted" and recording.bytes == 123
        assert session.get(Run, "ingest-1").config == {"clip_seconds": 4}
        assert session.scalars(select(DatasetVersion.version).where(DatasetVersion.name == "ego")).all() == [1]


def test_unique_dataset_version_and_foreign_key_are_enforced(catalog):
    with catalog.session() as session:
        session.add(DatasetVersion(name="ego", version=1, manifest_key="m"))
    with pytest.raises(CatalogError, match="IntegrityError"):
        with catalog.session() as session:
            session.add(DatasetVersion(name="ego", version=1, manifest_key="m2"))
    with pytest.raises(CatalogError, match="IntegrityError"):
        with catalog.session() as session:
            session.add(Delivery(id="orphan", partner_id="nobody", contract_version="1.0"))


def test_empty_database_says_to_upgrade(catalog_url):
    fresh = Catalog(catalog_url)
    with pytest.raises(CatalogError, match="alliance catalog upgrade"):
        fresh.ensure_current()
    fresh.dispose()


def test_unreachable_postgres_is_a_catalog_error():
    with pytest.raises(CatalogError, match="unreachable"):
        Catalog("postgresql+psycopg://nobody@127.0.0.1:9/none").current_revision()

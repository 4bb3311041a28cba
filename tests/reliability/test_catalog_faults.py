"""The catalog under faults: a migration cut short, and PostgreSQL stopped in the middle of a run then started again."""

from __future__ import annotations

from unittest import mock

import pytest
from sqlalchemy import inspect

from alliance.catalog import Catalog


def test_an_interrupted_first_migration_leaves_a_catalog_that_upgrades(catalog_url):
    """Regression (found here, fixed in 1479571; alliance/catalog.py, SQLite only): Catalog.upgrade runs the migrations in engine.begin(), but Python's
    sqlite3 driver commits each CREATE TABLE on its own (it opens transactions only before DML), so a migration cut
    short (an error, or SIGKILL: seen in the ingest crash trials when the kill lands in the first run's upgrade)
    leaves tables without an alembic_version row; every later upgrade then fails with 'table partners already
    exists' and the catalog stays broken. PostgreSQL (transactional DDL) passes. Fix, SQLAlchemy's pysqlite recipe:
    in the 'connect' listener set dbapi_connection.isolation_level = None, and listen to 'begin' to emit BEGIN
    (tried: the cut-short upgrade leaves no table, the next one reaches every head)."""
    import alembic.op

    real = alembic.op.create_table
    calls: list[str] = []

    def power_cut(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise RuntimeError("power cut during the migration")
        return real(*args, **kwargs)

    catalog = Catalog(catalog_url)
    with mock.patch.object(alembic.op, "create_table", power_cut), pytest.raises(RuntimeError):
        catalog.upgrade()
    left = set(inspect(catalog.engine).get_table_names()) - {"alembic_version"}
    catalog.dispose()
    catalog = Catalog(catalog_url)
    try:
        catalog.upgrade()
        assert catalog.current_revision() == catalog.head_revision()
    finally:
        catalog.dispose()
    assert not left, f"a failed migration left tables behind: {sorted(left)}"

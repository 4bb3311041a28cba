"""The catalog database: SQLite by default, PostgreSQL by URL, schema kept by alembic migrations."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from alliance.errors import CatalogError

MIGRATIONS = Path(__file__).parent / "migrations"


class Catalog:
    """A handle on one catalog database; sessions commit on success and roll back on error."""

    def __init__(self, url: str):
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=True, future=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def _alembic_config(self, connection):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "heads") -> str:
        """Apply migrations up to `revision` (every branch head by default); returns the revision(s) reached."""
        from alembic import command

        try:
            with self.engine.begin() as connection:
                command.upgrade(self._alembic_config(connection), revision)
        except OperationalError as e:
            raise CatalogError(f"catalog {self.safe_url}: cannot upgrade: {e.orig}") from e
        return self.current_revision() or "base"

    def current_revision(self) -> str | None:
        """The revision(s) the database is at, comma-separated when several branches exist; None if empty."""
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as connection:
                heads = MigrationContext.configure(connection).get_current_heads()
        except OperationalError as e:
            raise CatalogError(f"catalog {self.safe_url}: unreachable: {e.orig}") from e
        return ",".join(sorted(heads)) or None

    def head_revision(self) -> str:
        """The revision(s) the code expects, in the same form as current_revision()."""
        from alembic.script import ScriptDirectory

        return ",".join(sorted(ScriptDirectory.from_config(self._alembic_config(None)).get_heads()))

    def ensure_current(self) -> None:
        """Raise a CatalogError that says what to run when the schema is behind the code."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise CatalogError(f"catalog {self.safe_url} is at revision {current or 'empty'}, the code needs {head}: "
                               f"run `alliance catalog upgrade`")

    def prepare(self) -> "Catalog":
        """Ready for a command to use. The embedded SQLite catalog is created or upgraded in place (a first run needs
        no setup); a server database is only ever migrated by `alliance catalog upgrade`: one behind the code raises
        a CatalogError that says so."""
        if self.backend == "sqlite":
            self.upgrade()
        else:
            self.ensure_current()
        return self

    def tables(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise CatalogError(f"catalog {self.safe_url}: {type(e).__name__}: {getattr(e, 'orig', e)}") from e
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection, _record) -> None:
    # Python's sqlite3 opens transactions lazily and only before DML: a migration's CREATE TABLEs would each
    # commit on their own, and a session that read first could not take the write lock later (SQLITE_BUSY at
    # once, busy_timeout or not). We switch that off and begin every transaction ourselves (_sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the one writer
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(connection) -> None:
    """One writer at a time, waiting up to busy_timeout: the embedded catalog is for one machine."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_catalog(url: str | None = None) -> Catalog:
    """The configured catalog (or the one at url)."""
    if url is None:
        from alliance.settings import load_settings

        url = load_settings().effective_catalog_url
    return Catalog(url)

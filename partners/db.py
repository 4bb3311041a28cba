"""Catalog sessions that write: on SQLite, this process's writers take turns, so none meets a stale WAL snapshot."""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from typing import Iterator

from sqlalchemy.orm import Session

from alliance.catalog import Catalog

_LOCKS: dict[str, threading.RLock] = {}
_GUARD = threading.Lock()


def _lock(catalog: Catalog):
    if catalog.backend != "sqlite":
        return nullcontext()  # PostgreSQL locks rows; concurrent writers simply wait for each other
    with _GUARD:
        return _LOCKS.setdefault(catalog.url, threading.RLock())


@contextmanager
def writing(catalog: Catalog) -> Iterator[Session]:
    """A session that may read and then write.

    SQLite in WAL mode answers "database is locked" at once (no busy wait) when a transaction that began by reading
    tries to write after another connection committed; serialising this process's writing sessions avoids it."""
    with _lock(catalog), catalog.session() as session:
        yield session

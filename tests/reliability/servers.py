"""Dev servers these tests may kill: SeaweedFS restarted on the same ports, PostgreSQL stopped and started again."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from unittest import mock

import alliance.devservers as devservers
from alliance.devservers import Postgres, SeaweedS3
from alliance.settings import S3Settings
from alliance.errors import StoreError
from alliance.store import S3Store


class RestartableSeaweed:
    """A SeaweedFS of our own whose restart keeps its data directory and every port (clients keep their URLs)."""

    def __init__(self, workdir: Path):
        self.server = SeaweedS3(workdir)
        self.ports: list[int] | None = None
        self.restarts = 0

    def _ports(self, n: int) -> list[int]:
        if self.ports is None:
            self.ports = devservers._free_ports(n)
        return list(self.ports)

    def start(self) -> "RestartableSeaweed":
        real = devservers._free_ports
        with mock.patch.object(devservers, "_free_ports", lambda n: self.ports or self._remember(real(n))):
            self.server.start()
        return self

    def _remember(self, ports: list[int]) -> list[int]:
        self.ports = ports
        return ports

    def stop(self) -> None:
        self.server.stop()

    def restart(self, down_s: float = 1.0) -> float:
        """Stop, stay down down_s, start again; returns the seconds the S3 API was unreachable."""
        started = time.monotonic()
        self.server.stop()
        time.sleep(down_s)
        self.start()
        self.restarts += 1
        return time.monotonic() - started

    def wait_until_readable(self, store: S3Store, key: str, timeout_s: float = 60.0) -> None:
        """After a restart the S3 API answers before the volumes are loaded again: wait until an object reads."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                store.get_bytes(key)
                return
            except StoreError as err:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{store.describe(key)} still unreadable {timeout_s:.0f} s after the "
                                         f"restart: {err}") from err
                time.sleep(0.2)

    def store(self, prefix: str = "", max_attempts: int = 8) -> S3Store:
        who = self.server.identity("admin")
        store = S3Store(f"s3://faults/{prefix or uuid.uuid4().hex[:10]}", S3Settings(
            endpoint_url=self.server.endpoint_url, access_key_id=who.access_key, secret_access_key=who.secret_key,
            max_attempts=max_attempts))
        store.ensure_bucket()
        return store


class StoppablePostgres:
    """A PostgreSQL 15 of our own, in a directory the `postgres` user can own."""

    def __init__(self):
        self.workdir = Path(tempfile.mkdtemp(prefix="alliance-faults-pg-"))
        self.server = Postgres(self.workdir)
        self.stops = 0

    def start(self) -> "StoppablePostgres":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.stops += 1

    def database(self) -> str:
        return self.server.create_database("f")

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

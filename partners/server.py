"""Running the delivery service: uvicorn on a loopback port in this process (tests, demo) or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from alliance.catalog import Catalog
from alliance.errors import AllianceError
from alliance.settings import Settings
from alliance.store import ObjectStore
from partners.service import ServiceConfig, create_app


@dataclass(frozen=True)
class RunningService:
    """A service answering at `url` until its context exits."""

    url: str
    host: str
    port: int


class ServiceStartError(AllianceError):
    """The service did not start listening."""


@contextmanager
def serving(settings: Settings, config: ServiceConfig = ServiceConfig(), *, host: str = "127.0.0.1", port: int = 0,
            store: ObjectStore | None = None, catalog: Catalog | None = None,
            timeout_s: float = 30.0) -> Iterator[RunningService]:
    """Start the delivery service in a background thread on host:port (0: a free port); stop it on exit."""
    import uvicorn

    app = create_app(settings, config, store=store, catalog=catalog)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="alliance-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ServiceStartError(f"the delivery service did not start on {host}:{bound} within {timeout_s:.0f}s")
        time.sleep(0.02)
    try:
        yield RunningService(f"http://{host}:{bound}", host, bound)
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


def run_foreground(settings: Settings, config: ServiceConfig, host: str, port: int) -> None:
    """`alliance serve`: the service in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(settings, config), host=host, port=port, log_level="info")

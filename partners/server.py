"""Running the delivery service: uvicorn on a loopback port in this process (tests, demo) or in the foreground,
with an HTTP protocol that holds against slow and idle clients (header and body timeouts, a minimum body rate)."""

from __future__ import annotations

import json
import logging
import re
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
from partners.http import security_headers
from partners.service import ServiceConfig, create_app


@dataclass(frozen=True)
class RunningService:
    """A service answering at `url` until its context exits."""

    url: str
    host: str
    port: int


class ServiceStartError(AllianceError):
    """The service did not start listening."""


def guarded_protocol(config: ServiceConfig) -> type:
    """uvicorn's h11 protocol with deadlines a slowloris cannot stretch: the request line and headers within
    header_timeout_s of their first byte (or of the connection, for a silent one), no body pause longer than
    body_idle_timeout_s, and after body_grace_s at least min_body_rate bytes/s. A late client gets 408 and the
    connection is closed, so its request ends (the app sees a disconnect)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = None
            self._body_started = self._body_last = 0.0
            self._body_bytes = 0
            self._arm_headers()

        def _arm_headers(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(config.header_timeout_s, self._late, "header_timeout",
                                                      "the request headers did not arrive in time")

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def data_received(self, data: bytes) -> None:
            waiting = self.conn.their_state is h11.IDLE
            super().data_received(data)
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE and (waiting or data):
                self._arm_headers()  # a request has begun (or the next one on a kept-alive connection)
            elif state is h11.SEND_BODY:
                now = time.monotonic()
                if waiting:  # the headers just completed: the body's clock starts
                    self._disarm()
                    self._body_started, self._body_bytes = now, 0
                    self._deadline = self.loop.call_later(1.0, self._check_body)
                self._body_last = now
                self._body_bytes += len(data)
            else:
                self._disarm()

        def _check_body(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
                return
            now = time.monotonic()
            if self.flow.read_paused:  # the app is not reading (a slow store): the client is not to blame
                self._body_last = now
                self._body_started += 1.0
            elapsed = now - self._body_started
            if now - self._body_last > config.body_idle_timeout_s:
                return self._late("body_timeout", f"no body byte for {config.body_idle_timeout_s:g} s")
            if elapsed > config.body_grace_s and self._body_bytes / elapsed < config.min_body_rate:
                return self._late("body_too_slow", f"the body arrives at {self._body_bytes / elapsed:.0f} B/s, "
                                  f"below the {config.min_body_rate} B/s minimum")
            self._deadline = self.loop.call_later(1.0, self._check_body)

        def send_400_response(self, msg: str) -> None:
            """h11 refuses headers it cannot buffer (over max_header_bytes) before the app sees them: the same 431
            as the app's own header limit, whichever of the two met the request first."""
            if len(self.conn.trailing_data[0]) <= config.max_header_bytes:
                return super().send_400_response(msg)
            self._refuse(431, b"Request Header Fields Too Large", "too_many_headers",
                         f"the request headers are over {config.max_header_bytes} bytes: send fewer")
            self.transport.close()

        def _refuse(self, status: int, phrase: bytes, reason: str, detail: str) -> None:
            body = json.dumps({"error": reason, "detail": detail, "problems": []}).encode()
            try:
                out = self.conn.send(h11.Response(status_code=status, reason=phrase, headers=[
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"), *security_headers()]))
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass

        def _late(self, reason: str, detail: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.conn.our_state is h11.SEND_RESPONSE and (self.cycle is None or not self.cycle.response_started):
                self._refuse(408, b"Request Timeout", reason, f"{detail}: send the request at once, then retry")
            if self.cycle is not None:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


# Signed query strings, tokens and credentials never reach a log line.
_SECRET_PARAM = re.compile(r"(?i)([?&](?:sig|signature|token|access_token|api_key|key|secret|password|"
                           r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s\"]*")
_TOKEN = re.compile(r"alk_[0-9a-f]{16}_[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """A path, URL or log message with every signature, token and password replaced by ***."""
    return _TOKEN.sub("alk_***", _SECRET_PARAM.sub(r"\1***", text))


class RedactSecrets(logging.Filter):
    """Redacts uvicorn's access log lines (client, method, path with query, version, status) and any message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _install_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


def uvicorn_config(app, config: ServiceConfig, **kwargs):
    """The uvicorn settings the service always runs with: guarded protocol, limits, redacted logs."""
    import uvicorn

    _install_redaction()
    return uvicorn.Config(app, http=guarded_protocol(config), timeout_keep_alive=config.keep_alive_s,
                          limit_concurrency=config.max_connections,
                          h11_max_incomplete_event_size=config.max_header_bytes, server_header=False, **kwargs)


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
    server = uvicorn.Server(uvicorn_config(app, config, log_level="warning", access_log=False, lifespan="on",
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

    uvicorn.Server(uvicorn_config(create_app(settings, config), config, host=host, port=port,
                                  log_level="info")).run()

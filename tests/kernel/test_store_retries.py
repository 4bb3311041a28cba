"""Retries: throttling and 5xx answers are retried with backoff; a client error is not."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alliance.errors import StoreError
from alliance.settings import S3Settings
from alliance.store import S3Store

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


class FlakyS3:
    """An endpoint that answers the first `failures` requests with `status` and then serves one object."""

    def __init__(self, failures: int, status: int = 503):
        self.failures, self.status, self.requests = failures, status, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                if outer.requests <= outer.failures:
                    self.send_response(outer.status)
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                body = b"finally"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


def store_for(endpoint: FlakyS3, attempts: int) -> S3Store:
    return S3Store("s3://bucket/prefix", S3Settings(endpoint_url=endpoint.url, access_key_id="k", secret_access_key="s",
                                                    max_attempts=attempts))


@pytest.mark.parametrize("status", [503, 500])
def test_server_errors_are_retried_until_success(status):
    endpoint = FlakyS3(failures=2, status=status)
    try:
        assert store_for(endpoint, attempts=4).get_bytes("a/b.bin") == b"finally"
        assert endpoint.requests == 3
    finally:
        endpoint.close()


def test_retries_are_bounded_and_the_error_names_the_key():
    endpoint = FlakyS3(failures=100)
    try:
        with pytest.raises(StoreError, match=r"get s3://bucket/prefix/a/b.bin failed: SlowDown"):
            store_for(endpoint, attempts=3).get_bytes("a/b.bin")
        assert endpoint.requests == 3
    finally:
        endpoint.close()

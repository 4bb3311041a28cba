"""Run media work in a child process with a wall-clock bound, so a hanging or crashing decoder costs one file.

Children are forked by a small helper process (one per calling process, started on first use, PyAV preloaded) that
has a single thread: forking the caller itself would copy a threaded Beam worker or web server mid-lock (gRPC's
mutexes abort in such children), and multiprocessing's spawn/forkserver re-import the caller's __main__ per child.
"""

from __future__ import annotations

import atexit
import gc
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, TypeVar

from ingest.errors import DecodeError

T = TypeVar("T")
_PRELOAD = ("av", "numpy", "ingest.probe", "ingest.clips")
_START_TIMEOUT_S = 30.0


class _Helper:
    """The client side: the helper's process and its socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="alliance-bounded-")  # 0700: only this user can connect
        self.address = os.path.join(self.dir, "s")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen([sys.executable, "-m", "ingest.bounded", self.address, str(os.getpid())],
                                        env=env, stdin=subprocess.DEVNULL)
        ready = Path(self.address + ".ready")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise DecodeError(self.address, "decode_failed", "the decoding helper process did not start; check "
                                                                 "that PyAV imports (python -c 'import av')")
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.process.poll() is None

    def connect(self) -> Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.address)
        return Connection(sock.detach())

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


_helper: _Helper | None = None
_helper_pid = 0
_lock = threading.Lock()


def _get_helper() -> _Helper:
    global _helper, _helper_pid
    with _lock:
        if _helper is None or _helper_pid != os.getpid() or not _helper.alive():
            _helper, _helper_pid = _Helper(), os.getpid()
            atexit.register(_helper.stop)
        return _helper


def run_bounded(fn: Callable[..., T], args: tuple, *, path: str | Path, timeout_s: float,
                memory_limit_mb: int = 0) -> T:
    """fn(*args) in a child process; a hang past timeout_s, a crash or an unexpected error becomes a DecodeError.

    fn and args must pickle (module-level functions, dataclasses, arrays); so must the result.
    """
    conn = _get_helper().connect()
    try:
        if not conn.poll(_START_TIMEOUT_S):
            raise DecodeError(path, "decode_failed", "the decoding helper did not fork a child; retry the run")
        pid = conn.recv()
        conn.send((fn, args, memory_limit_mb))
        if not conn.poll(timeout_s):
            _kill(pid)
            raise DecodeError(path, "decode_timeout",
                              f"decoding did not finish within {timeout_s:g} s; the file may be malformed "
                              f"(re-encode it) or too long for the time bound (raise the timeout)")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise DecodeError(path, "decode_failed", "the decoder process died (crashed or was killed); the file "
                                                     "crashes FFmpeg: re-encode it with a standard encoder") from None
    finally:
        conn.close()
    if status == "ok":
        return payload
    if status == "decode_error":
        raise DecodeError(*payload)
    if status == "memory":
        raise DecodeError(path, "decode_failed", f"decoding needed more than {memory_limit_mb} MiB of memory; "
                                                 f"re-encode the file at a lower resolution")
    raise DecodeError(path, "decode_failed", f"unexpected error while decoding: {payload.strip().splitlines()[-1]}")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


# --------------------------------------------------------------------------- the helper process


def _child(conn: Connection) -> None:
    """In a forked child: run one request and send back its outcome."""
    conn.send(os.getpid())
    fn, args, memory_limit_mb = conn.recv()
    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = ("ok", fn(*args))
    except DecodeError as e:
        result = ("decode_error", (e.path, e.reason, e.detail))
    except MemoryError:
        result = ("memory", "")
    except Exception:  # anything else goes back to the caller with its traceback, never swallowed
        result = ("error", traceback.format_exc(limit=6))
    conn.send(result)
    conn.close()


def _warm_up() -> None:
    """Encode and decode two tiny frames once, so FFmpeg's and x264's one-time tables are built here and every
    forked child inherits them instead of building them again (tens of milliseconds a window)."""
    import io

    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24").reformat(
                format="yuv420p")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer, mode="r", format="mov") as container:
        for frame in container.decode(video=0):
            frame.reformat(width=32, height=32, format="yuv420p").to_ndarray()


def serve(address: str, parent_pid: int) -> None:
    """Accept one connection per request and fork a child for it; exit when the parent is gone."""
    for module in _PRELOAD:
        __import__(module)
    _warm_up()
    gc.freeze()  # children never collect (and so never write to) what the helper holds: fewer copy-on-write pages
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(128)
    server.settimeout(1.0)
    Path(address + ".ready").touch()
    while True:
        try:
            client, _ = server.accept()
        except socket.timeout:
            if os.getppid() != parent_pid:
                os._exit(0)
            continue
        pid = os.fork()
        if pid == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 0
            try:
                client.setblocking(True)
                _child(Connection(client.detach()))
            except BaseException:  # the caller sees a closed connection and reports the child's death
                code = 1
            os._exit(code)
        client.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))

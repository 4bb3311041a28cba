"""Run media work in a child process with a wall-clock bound, so a hanging or crashing decoder costs one file.

Children are forked by a small helper process (one per calling process, started on first use, PyAV preloaded) that
has a single thread: forking the caller itself would copy a threaded Beam worker or web server mid-lock (gRPC's
mutexes abort in such children), and multiprocessing's spawn/forkserver re-import the caller's __main__ per child.

A child serves one call at a time and is kept for the next (up to TASKS_PER_CHILD): a fresh process per call paid
its page faults and cold caches again every time (6-10% of a clip window's time). A child that timed out, died, ran
out of memory or failed unexpectedly is never reused.

The failure contract: what the file causes (a DecodeError inside, a hang, a crash, too much memory) is a DecodeError
with its reason; what the machinery causes (the helper does not start or fork, a child does not take the call, the
machine's files fail under the call with an OSError) is a RetryableError, so the file is tried again and never
refused for it; anything else the call raised comes back as a BoundedCallError carrying the child's traceback.
"""

from __future__ import annotations

import atexit
import gc
import os
import pickle
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

from ingest.errors import DecodeError, RetryableError

T = TypeVar("T")
_PRELOAD = ("av", "numpy", "ingest.probe", "ingest.clips")
_START_TIMEOUT_S = 30.0
_THREAD_POOLS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TASKS_PER_CHILD = 64  # then a fresh child: what a long-lived decoder might leak or fragment stays bounded


class BoundedCallError(Exception):
    """An error the call raised in the child that is neither a DecodeError nor a fault of the machine: a bug, which
    the caller reports with the child's traceback (a Beam dead letter), never a verdict on the file."""


def one_core_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with BLAS and OpenMP pools at one thread unless set: media work is one core's, and numpy's dot on a
    frame otherwise woke threads that spun on the other cores."""
    return {**{pool: "1" for pool in _THREAD_POOLS}, **env}


class _Helper:
    """The client side: the helper's process and its socket."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.idle: dict[int, list[_Child]] = {}  # memory limit -> children waiting for a call
        self.idle_lock = threading.Lock()
        env = one_core_env(dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
        try:
            self.dir = tempfile.mkdtemp(prefix="alliance-bounded-")  # 0700: only this user can connect
            self.address = os.path.join(self.dir, "s")
            self.process = subprocess.Popen([sys.executable, "-m", "ingest.bounded", self.address, str(os.getpid())],
                                            env=env, stdin=subprocess.DEVNULL)
        except OSError as e:  # no process or no temporary directory to be had on this machine right now
            raise RetryableError(f"the decoding helper process could not be started ({e}); the work is retried") from e
        ready = Path(self.address + ".ready")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RetryableError(f"the decoding helper process did not start within {_START_TIMEOUT_S:g} s; "
                                     f"check that PyAV imports (python -c 'import av'); the work is retried")
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.process.poll() is None

    def child(self, memory_limit_mb: int) -> "_Child":
        """An idle child with this memory limit, or a new one."""
        with self.idle_lock:
            waiting = self.idle.get(memory_limit_mb, [])
            while waiting:
                child = waiting.pop()
                if child.usable():
                    return child
                child.kill()
        return self.fork(memory_limit_mb)

    def release(self, child: "_Child") -> None:
        """Back to the idle children after a call that left it sound; retired once it has served its share."""
        if child.calls >= TASKS_PER_CHILD:
            child.close()
            return
        with self.idle_lock:
            self.idle.setdefault(child.memory_limit_mb, []).append(child)

    def fork(self, memory_limit_mb: int) -> "_Child":
        """A new child, forked by the helper."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError as e:
            sock.close()
            raise RetryableError(f"the decoding helper at {self.address} refused a child ({e}); the work is "
                                 f"retried") from e
        conn = Connection(sock.detach())
        try:
            if not conn.poll(_START_TIMEOUT_S):
                raise RetryableError(f"the decoding helper did not fork a child within {_START_TIMEOUT_S:g} s; the "
                                     f"work is retried")
            pid = conn.recv()
            conn.send(memory_limit_mb)
        except (EOFError, OSError) as e:
            conn.close()
            raise RetryableError(f"the decoding helper hung up while forking a child ({e!r}); the work is "
                                 f"retried") from e
        except RetryableError:
            conn.close()
            raise
        return _Child(conn, pid, memory_limit_mb)

    def disown(self) -> None:
        """Let go of the idle children without touching them or the helper (in a forked copy of the caller)."""
        for child in (c for waiting in self.idle.values() for c in waiting):
            child.close()
        self.idle.clear()

    def stop(self) -> None:
        if os.getpid() != self.owner:  # an atexit handler inherited by a forked copy of the caller
            return
        with self.idle_lock:
            self.disown()
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Child:
    """The caller's end of one forked child: its connection, pid, memory limit and how many calls it has served."""

    def __init__(self, conn: Connection, pid: int, memory_limit_mb: int):
        self.conn, self.pid, self.memory_limit_mb, self.calls = conn, pid, memory_limit_mb, 0

    def usable(self) -> bool:
        """An idle child has nothing to say: a readable connection means it is gone (end of file)."""
        try:
            return not self.conn.poll(0)
        except OSError:
            return False

    def start(self, fn: Callable, args: tuple) -> bool:
        """Hand it a call; False when it turns out to be gone before taking it (then no file is to blame)."""
        try:
            self.conn.send((fn, args))
            if not self.conn.poll(_START_TIMEOUT_S):
                return False
            return self.conn.recv() == "started"
        except (EOFError, OSError):
            return False

    def close(self) -> None:
        self.conn.close()

    def kill(self) -> None:
        self.close()
        _kill(self.pid)


_helper: _Helper | None = None
_lock = threading.Lock()


def _get_helper() -> _Helper:
    global _helper
    with _lock:
        if _helper is None or not _helper.alive():
            if _helper is not None:
                _helper.stop()  # its idle children go with it
            _helper = _Helper()
            atexit.register(_helper.stop)
        return _helper


def _after_fork_in_child() -> None:
    """A forked copy of the caller starts its own helper: the parent's helper and children stay the parent's."""
    global _helper, _lock
    if _helper is not None:
        _helper.disown()
    _helper, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_bounded(fn: Callable[..., T], args: tuple, *, path: str | Path, timeout_s: float,
                memory_limit_mb: int = 0) -> T:
    """fn(*args) in a child process. A DecodeError it raises, a hang past timeout_s, a crash or too much memory is a
    DecodeError (the file's fault); a helper or child that fails to start or take the call, or an OSError of the
    machine's files under the call, is a RetryableError; any other error is a BoundedCallError with the child's
    traceback.

    fn and args must pickle (module-level functions, dataclasses, arrays); so must the result.
    """
    helper = _get_helper()
    child = helper.child(memory_limit_mb)
    if not child.start(fn, args):  # it left while idle (killed from outside, say): one fresh child, once
        child.kill()
        child = helper.fork(memory_limit_mb)
        if not child.start(fn, args):
            child.kill()
            raise RetryableError(f"{path}: a fresh decoding child did not take the call either; the work is retried")
    child.calls += 1
    try:
        status, payload = child.conn.recv() if child.conn.poll(timeout_s) else ("timeout", None)
    except (EOFError, OSError):
        status, payload = "died", None
    except BaseException:  # the caller was interrupted: the call is abandoned, and its child with it
        child.kill()
        raise
    if status in ("ok", "decode_error"):  # a refused file leaves the child as sound as a good one
        helper.release(child)
    else:
        child.kill()
    if status == "ok":
        return payload
    if status == "decode_error":
        raise DecodeError(*payload)
    if status == "timeout":
        raise DecodeError(path, "decode_timeout",
                          f"decoding did not finish within {timeout_s:g} s; the file may be malformed "
                          f"(re-encode it) or too long for the time bound (raise the timeout)")
    if status == "died":
        raise DecodeError(path, "decode_failed", "the decoder process died (crashed or was killed); the file "
                                                 "crashes FFmpeg: re-encode it with a standard encoder")
    if status == "memory":
        raise DecodeError(path, "decode_failed", f"decoding needed more than {memory_limit_mb} MiB of memory; "
                                                 f"re-encode the file at a lower resolution")
    if status == "os_error":
        raise RetryableError(f"{path}: the machine's files failed under the call, not the recording's bytes (those "
                             f"are refused with a reason): {payload.strip().splitlines()[-1]}; the work is retried")
    raise BoundedCallError(f"{path}: unexpected error in the bounded child; its traceback:\n{payload.rstrip()}")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


# --------------------------------------------------------------------------- the helper process


def _child(conn: Connection) -> None:
    """In a forked child: take calls one at a time and send back each outcome, until the caller hangs up."""
    _die_with_parent()
    conn.send(os.getpid())
    memory_limit_mb = conn.recv()
    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            call = conn.recv_bytes()
        except EOFError:
            return
        conn.send("started")
        try:
            fn, args = pickle.loads(call)
            result = ("ok", fn(*args))
        except DecodeError as e:
            result = ("decode_error", (e.path, e.reason, e.detail))
        except MemoryError:
            result = ("memory", "")
        except OSError as e:
            # the recording's own bytes that cannot be read are DecodeErrors already (open_container) or PyAV's own
            # errors: any other OSError is the machine's (a local copy evicted under the call, a full disk)
            result = ("error" if _from_decoder(e) else "os_error", traceback.format_exc(limit=6))
        except Exception:  # anything else goes back to the caller with its traceback, never swallowed
            result = ("error", traceback.format_exc(limit=6))
        conn.send(result)
        call = result = fn = args = None  # nothing of one call is held while waiting for the next


def _from_decoder(error: OSError) -> bool:
    """PyAV's own errors of the file mix in OSError subclasses (av.error.FileNotFoundError and kin)."""
    return type(error).__module__.startswith("av.")


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the helper exits (it exits when the caller is gone), so a call stuck in a
    decoder never outlives the run that made it. Elsewhere a stuck child lives until its call returns."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


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
    """Accept one connection per child and fork the child; exit when the parent is gone."""
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

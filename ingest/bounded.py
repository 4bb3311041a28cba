"""Run media work in a child process with a wall-clock bound, so a hanging or crashing decoder costs one file."""

from __future__ import annotations

import multiprocessing
import resource
import traceback
from pathlib import Path
from typing import Any, Callable, TypeVar

from ingest.errors import DecodeError

T = TypeVar("T")


def _context():
    # fork: the child starts in a millisecond with PyAV already imported, and needs no re-import of the
    # launching script (spawn and forkserver re-run __main__ in every child). In a threaded parent a lock held
    # by another thread could stall the child: the time bound below turns that into a refusal, never a hang.
    return multiprocessing.get_context("fork")


def _child_main(conn, fn: Callable[..., Any], args: tuple, memory_limit_mb: int) -> None:
    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = ("ok", fn(*args))
    except DecodeError as e:
        result = ("decode_error", (e.path, e.reason, e.detail))
    except MemoryError:
        result = ("memory", "")
    except Exception:  # anything else is reported to the parent with its traceback, never swallowed
        result = ("error", traceback.format_exc(limit=6))
    conn.send(result)
    conn.close()


def run_bounded(fn: Callable[..., T], args: tuple, *, path: str | Path, timeout_s: float,
                memory_limit_mb: int = 0) -> T:
    """fn(*args) in a child process; a hang past timeout_s, a crash or an unexpected error becomes a DecodeError."""
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(sender, fn, args, memory_limit_mb), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise DecodeError(path, "decode_timeout",
                              f"decoding did not finish within {timeout_s:g} s; the file may be malformed "
                              f"(re-encode it) or too long for the time bound (raise timeout_s)")
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join(5)
            raise DecodeError(path, "decode_failed",
                              f"the decoder process died (exit code {process.exitcode}); the file crashes FFmpeg: "
                              f"re-encode it with a standard encoder") from None
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join(5)
    if status == "ok":
        return payload
    if status == "decode_error":
        raise DecodeError(*payload)
    if status == "memory":
        raise DecodeError(path, "decode_failed", f"decoding needed more than {memory_limit_mb} MiB of memory; "
                                                 f"re-encode the file at a lower resolution")
    raise DecodeError(path, "decode_failed", f"unexpected error while decoding: {payload.strip().splitlines()[-1]}")

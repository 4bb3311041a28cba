"""Run one call in a forked child and measure it: outcome, wall time, and the peak memory of every process it made."""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import select
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Measured:
    """What one measured call did."""

    outcome: str  # "ok", "refused" (an expected error type), "crashed" (anything else), "hung", "died"
    value: Any  # the return value, or (error type name, reason, message) when refused/crashed
    elapsed_s: float
    peak_rss_mb: float  # the largest resident set among the call's own process and the processes it started

    @property
    def reason(self) -> str | None:
        return self.value[1] if self.outcome == "refused" else None


def measure(fn: Callable[[], Any], expected: tuple[type[BaseException], ...], *, hang_after_s: float) -> Measured:
    """fn() in a forked child (its memory counted apart from ours); kills it if it runs past hang_after_s."""
    reader, writer = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: run, report, and leave without running any of the parent's cleanup
        code = 0
        try:
            os.setpgid(0, 0)  # its own process group: a hang is killed with everything it started
            os.close(reader)
            try:
                result = ("ok", fn())
            except expected as e:
                result = ("refused", (type(e).__name__, getattr(e, "reason", None), str(e)))
            except BaseException as e:  # reported, with its traceback, as the crash it is
                result = ("crashed", (type(e).__name__, None, traceback.format_exc(limit=8)))
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            try:
                payload = pickle.dumps((*result, max(own, children) / 1024))
            except Exception as e:  # an unpicklable return value is reported as such
                payload = pickle.dumps(("crashed", (type(e).__name__, None, repr(e)), max(own, children) / 1024))
            with os.fdopen(writer, "wb") as out:
                out.write(payload)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    with contextlib.suppress(PermissionError, ProcessLookupError):  # the child did it first, or already left
        os.setpgid(pid, pid)
    os.close(writer)
    chunks = []
    deadline = started + hang_after_s
    hung = False
    with os.fdopen(reader, "rb") as source:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hung = True
                break
            ready, _, _ = select.select([source], [], [], left)
            if ready:
                chunk = os.read(source.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    if hung:
        os.killpg(pid, signal.SIGKILL)
    _, _, usage = os.wait4(pid, 0)
    _kill_group(pid)  # whatever the call left running in its group goes with it
    elapsed = time.monotonic() - started
    if hung:
        return Measured("hung", None, elapsed, usage.ru_maxrss / 1024)
    if not chunks:
        return Measured("died", None, elapsed, usage.ru_maxrss / 1024)
    outcome, value, peak = pickle.loads(b"".join(chunks))
    return Measured(outcome, value, elapsed, peak)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # nothing left in the group: the usual case
        return


def baseline_rss_mb() -> float:
    """The resident set of a fresh fork of this process that does nothing: what every measured call starts from."""
    return measure(lambda: None, (), hang_after_s=30).peak_rss_mb

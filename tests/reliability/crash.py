"""Seeded SIGKILL of a job at a random point of its work, and the uninterrupted timing the points are drawn from."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Trial:
    """One killed (or, when it ended first, uninterrupted) run of a worker."""

    seed: int
    kill_after_s: float  # seconds after the worker said `ready`
    killed: bool  # False when the job finished before its kill time
    returncode: int
    output: str


def worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.reliability.workers", *args]


class _Output:
    """Collects a process's output in a thread and says when `ready` was printed."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)
            if line.strip() == "ready":
                self.ready.set()
        self.ready.set()

    def text(self) -> str:
        self.thread.join(10)
        return "".join(self.lines)


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, _Output]:
    process = subprocess.Popen(args, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return process, _Output(process)


def run_to_end(args: list[str], env: dict[str, str], timeout_s: float = 300) -> tuple[int, str, float]:
    """(return code, output, seconds of work after `ready`) of an uninterrupted run."""
    process, output = start(args, env)
    output.ready.wait(timeout_s)
    started = time.monotonic()
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        raise
    return code, output.text(), time.monotonic() - started


def kill_at(args: list[str], env: dict[str, str], seed: int, work_s: float, timeout_s: float = 300) -> Trial:
    """Start the job and SIGKILL its whole process group (workers, decoder children) at a seeded random point.

    The point is drawn from the first 80% of the uninterrupted run's work: that run paid one-time warm-ups (caches,
    imports, the validator's first suite) that later runs do not, so the tail would mostly miss."""
    delay = random.Random(seed).uniform(0.0, 0.8 * work_s)
    process, output = start(args, env)
    if not output.ready.wait(timeout_s):
        os.killpg(process.pid, signal.SIGKILL)
        raise TimeoutError(f"{args} never became ready")
    try:
        process.wait(delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        killed = True
    code = process.wait(30)
    _reap_group(process.pid)
    return Trial(seed, delay, killed, code, output.text())


def _reap_group(pgid: int) -> None:
    """Whatever of the group outlived its leader (a Beam worker, a decoder child) goes too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return

"""The bounded child: a hang or a crash costs one call and a bounded wait; a sound child serves the next call."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest

from ingest import bounded
from ingest.bounded import BoundedCallError, run_bounded
from ingest.errors import DecodeError, RetryableError


def _pid(path) -> int:
    return run_bounded(os.getpid, (), path=path, timeout_s=10)


def test_a_hang_becomes_decode_timeout_within_the_bound(tmp_path):
    started = time.monotonic()
    with pytest.raises(DecodeError) as caught:
        run_bounded(time.sleep, (30,), path=tmp_path / "slow.mp4", timeout_s=0.5)
    assert caught.value.reason == "decode_timeout" and time.monotonic() - started < 5


def test_a_crashing_decoder_becomes_decode_failed(tmp_path):
    with pytest.raises(DecodeError) as caught:
        run_bounded(os._exit, (3,), path=tmp_path / "crash.mp4", timeout_s=5)
    assert caught.value.reason == "decode_failed" and "died" in caught.value.detail


def test_a_sound_child_serves_the_next_call_and_a_refusal_leaves_it_sound(tmp_path):
    first = _pid(tmp_path)
    with pytest.raises(DecodeError):
        run_bounded(_refuse, (str(tmp_path / "bad.mp4"),), path=tmp_path / "bad.mp4", timeout_s=10)
    assert _pid(tmp_path) == first != os.getpid()


def test_a_child_that_timed_out_or_crashed_is_never_reused(tmp_path):
    first = _pid(tmp_path)
    with pytest.raises(DecodeError):
        run_bounded(time.sleep, (30,), path=tmp_path / "slow.mp4", timeout_s=0.3)
    second = _pid(tmp_path)
    with pytest.raises(DecodeError):
        run_bounded(os._exit, (3,), path=tmp_path / "crash.mp4", timeout_s=5)
    third = _pid(tmp_path)
    assert len({first, second, third}) == 3  # the sleeping call ran in `first`, the crash in `second`
    _wait_gone(first, second)


def test_an_unexpected_error_is_no_verdict_on_the_file_and_its_child_is_replaced(tmp_path):
    """A bug raises with the child's traceback (a dead letter in Beam), never DecodeError: the file is not refused."""
    first = _pid(tmp_path)
    with pytest.raises(BoundedCallError) as caught:
        run_bounded(int, ("not a number",), path=tmp_path / "x.mp4", timeout_s=5)
    assert "invalid literal" in str(caught.value) and "Traceback" in str(caught.value)
    assert _pid(tmp_path) != first


def test_an_os_error_of_the_machine_under_the_call_is_retryable_then_the_call_succeeds(tmp_path):
    """A local copy evicted under the call (or a full disk) is the machine's fault: retried, never decode_failed."""
    copy = tmp_path / "copy.mp4"
    with pytest.raises(RetryableError, match="FileNotFoundError"):
        run_bounded(_read, (str(copy),), path="landing/p/d/files/a.mp4", timeout_s=10)
    copy.write_bytes(b"back")  # the fault passed: the copy is there again
    assert run_bounded(_read, (str(copy),), path="landing/p/d/files/a.mp4", timeout_s=10) == b"back"


def test_a_helper_that_does_not_start_is_retryable_and_the_next_call_starts_one(tmp_path, monkeypatch):
    if bounded._helper is not None:
        bounded._helper.stop()
    with monkeypatch.context() as patched:
        patched.setattr(bounded.sys, "executable", "/bin/false")  # the helper exits at once
        with pytest.raises(RetryableError, match="did not start"):
            _pid(tmp_path)
    assert _pid(tmp_path) != os.getpid()  # the fault passed: a helper starts and the call runs


def test_a_child_that_never_takes_the_call_is_retryable_and_the_next_call_runs(tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(bounded._Child, "start", lambda self, fn, args: False)
        with pytest.raises(RetryableError, match="did not take the call"):
            _pid(tmp_path)
    assert _pid(tmp_path) != os.getpid()


def test_an_idle_child_killed_from_outside_costs_no_file(tmp_path):
    idle = _pid(tmp_path)
    os.kill(idle, signal.SIGKILL)
    _wait_gone(idle)
    assert _pid(tmp_path) not in (idle, os.getpid())


def test_a_child_retires_after_its_share_of_calls(tmp_path, monkeypatch):
    monkeypatch.setattr(bounded, "TASKS_PER_CHILD", 3)
    pids = [_pid(tmp_path) for _ in range(8)]
    runs = [len(list(same)) for _, same in itertools.groupby(pids)]  # the first child may have served earlier tests
    assert len(set(pids)) == len(runs) >= 3 and runs[0] <= 3 and set(runs[1:-1]) == {3} and runs[-1] <= 3


def test_children_with_other_memory_limits_are_other_children(tmp_path):
    plain = _pid(tmp_path)
    limited = run_bounded(os.getpid, (), path=tmp_path, timeout_s=10, memory_limit_mb=4096)
    assert limited != plain and _pid(tmp_path) == plain


def test_a_forked_copy_of_the_caller_uses_its_own_helper(tmp_path):
    """The copy neither shares the parent's idle children nor stops the parent's helper when it exits."""
    parent_child = _pid(tmp_path)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if _pid(tmp_path) != parent_child else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _pid(tmp_path) == parent_child


def test_a_stuck_child_does_not_outlive_its_caller(tmp_path):
    """A caller killed mid-call (a Beam worker under kill -9) takes its helper along, and the helper its children."""
    pid_file = tmp_path / "child.pid"
    caller = os.fork()
    if caller == 0:
        try:
            run_bounded(_hang_after_writing_pid, (str(pid_file),), path=tmp_path, timeout_s=120)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    stuck = int(pid_file.read_text())
    os.kill(caller, signal.SIGKILL)
    os.waitpid(caller, 0)
    _wait_gone(stuck, timeout_s=10)


def _hang_after_writing_pid(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _refuse(path: str) -> None:
    raise DecodeError(path, "corrupt", "made up for the test")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(*pids: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.02)

"""Beam pipeline options from Alliance settings plus any Beam flag given on the command line."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

    from alliance.settings import Settings


def beam_args(settings: "Settings", extra: Sequence[str] = ()) -> list[str]:
    """The runner flags the settings imply; flags in `extra` (Beam's own spelling) win over them."""
    runner = settings.runner
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("--")}
    args: list[str] = []

    def add(flag: str, value: str | int) -> None:
        if flag not in given and value not in ("", None):
            args.append(f"{flag}={value}")

    add("--runner", runner.runner)
    chosen = next((a.split("=", 1)[1] for a in extra if a.startswith("--runner=")), runner.runner)
    if chosen in ("FnApiRunner", "DirectRunner"):
        add("--direct_running_mode", runner.direct_running_mode)
        add("--direct_num_workers", runner.workers())
    if chosen == "PortableRunner":
        add("--job_endpoint", runner.job_endpoint)
        add("--environment_type", runner.environment_type or "LOOPBACK")
    return [*args, *extra]


def pipeline_options(settings: "Settings", extra: Sequence[str] = ()) -> "PipelineOptions":
    """PipelineOptions for a run; the launching process's modules are pickled for the workers."""
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    options = PipelineOptions(beam_args(settings, extra))
    options.view_as(SetupOptions).save_main_session = False
    return options


def worker_log_path(settings: "Settings", kind: str, run: str) -> Path:
    """Where the Beam workers of one run write what they print: $ALLIANCE_HOME/logs/{kind}-{run}.log."""
    return settings.home / "logs" / f"{kind}-{run}.log"


@contextmanager
def credentials_for_local_workers(settings: "Settings") -> Iterator[None]:
    """While a job runs, this process's S3 credentials are in its environment as ALLIANCE_S3_*: DoFns carry none
    (alliance.settings.StoreAddress), workers read their own environment, and the local runner's workers (child
    processes, or this one under LOOPBACK) inherit this one's. Workers elsewhere (a cluster, an EXTERNAL pool)
    are given theirs by whoever starts them; the launcher's never leave this machine."""
    wanted = {"ALLIANCE_S3_ACCESS_KEY_ID": settings.s3.access_key_id,
              "ALLIANCE_S3_SECRET_ACCESS_KEY": settings.s3.secret_access_key}
    wanted = {name: value for name, value in wanted.items() if value}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def worker_output_to(log: Path) -> Iterator[Path]:
    """Send what Beam's local worker processes print to `log` while the job runs, not to the terminal.

    Those workers inherit this process's stderr and log every bundle at INFO level there; their pipeline
    options reach them empty, so no Beam flag quiets them. Errors still reach the user: the job's exception
    is raised after stderr is restored, and the log keeps the workers' side of it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)

"""Beam pipeline options from Alliance settings plus any Beam flag given on the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

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

"""`alliance pipeline ...`: launch the Beam jobs (ingest, curate, shard) with Beam's own options."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Run the Beam pipelines. Any Beam flag after `--` goes to Beam, e.g. -- --runner=PortableRunner "
         "--job_endpoint=localhost:8099 --environment_type=LOOPBACK.",
    no_args_is_help=True,
)

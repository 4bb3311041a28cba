"""`alliance contract schema`: the delivery manifest's JSON Schema, for partners and their tools."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alliance.cli.common import console

app = typer.Typer(help="The data contract partners deliver under.", no_args_is_help=True)


@app.command("schema")
def schema(output: Path = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout.")) -> None:
    """Print the delivery manifest's JSON Schema (draft 2020-12)."""
    from partners.contract import manifest_schema

    text = json.dumps(manifest_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
        console.print(f"wrote {output}")
    else:
        print(text)

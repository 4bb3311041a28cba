"""`alliance config`: the effective configuration, with where it came from and secrets masked."""

from __future__ import annotations

import json

import typer

from alliance.cli.common import console, settings


def show(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    effective = settings()
    data = effective.masked()
    if as_json:
        console.print_json(json.dumps(data))
        return
    console.print(f"[bold]configuration[/bold] (from {effective.source})")
    for key, value in data.items():
        if isinstance(value, dict):
            console.print(f"[bold]{key}[/bold]")
            for sub, item in value.items():
                console.print(f"  {sub:<22} {item!s}")
        else:
            console.print(f"{key:<24} {value!s}")

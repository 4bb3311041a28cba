"""`alliance store ...`: look into the object store (file:// or s3://)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from alliance.cli.common import console, store

app = typer.Typer(help="List, read and write objects in the configured store.", no_args_is_help=True)


@app.command("ls")
def ls(prefix: str = typer.Argument("", help="Key prefix, e.g. datasets/ or landing/glassco/"),
       long: bool = typer.Option(False, "--long", "-l", help="Show sizes.")) -> None:
    """List the objects under PREFIX."""
    count = total = 0
    for info in store().list(prefix):
        count += 1
        total += info.size
        console.print(f"{info.size:>12,}  {info.key}" if long else info.key)
    if long:
        console.print(f"[dim]{count} objects, {total:,} bytes[/dim]")


@app.command("cat")
def cat(key: str) -> None:
    """Write one object to standard output."""
    with store().open_read(key) as reader:
        while chunk := reader.read(1 << 20):
            sys.stdout.buffer.write(chunk)


@app.command("put")
def put(path: Path = typer.Argument(..., exists=True, dir_okay=False), key: str = typer.Argument(...)) -> None:
    """Upload a local file to KEY, streaming."""
    target = store()
    written = target.put_file(key, path)
    console.print(f"wrote {written:,} bytes to {target.describe(key)}")


@app.command("get")
def get(key: str, path: Path) -> None:
    """Download KEY to a local file, streaming."""
    source = store()
    read = source.get_file(key, path)
    console.print(f"read {read:,} bytes from {source.describe(key)} into {path}")

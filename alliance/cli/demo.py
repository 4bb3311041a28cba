"""`alliance demo ...`: the whole path on the embedded defaults, on data the project makes itself."""

from __future__ import annotations

import time
from dataclasses import dataclass

import typer

from alliance.cli.common import console, settings

app = typer.Typer(help="Run the end-to-end demo on sample data the project makes.", no_args_is_help=True)


@dataclass(frozen=True)
class StepResult:
    step: str
    outcome: str
    seconds: float


def _foundation() -> str:
    """Open the configured store and catalog, bring the catalog to the code's schema, prove a store round trip."""
    from alliance.catalog import Catalog
    from alliance.store import S3Store, open_store

    effective = settings()
    store = open_store(settings=effective)
    if isinstance(store, S3Store):
        store.ensure_bucket()
    probe = "demo/foundation.txt"
    store.put_bytes(probe, b"alliance demo: the store answers\n")
    assert_read = store.get_bytes(probe)
    if assert_read != b"alliance demo: the store answers\n":
        raise RuntimeError(f"{store.describe(probe)} read back different bytes")
    catalog = Catalog(effective.effective_catalog_url)
    revision = catalog.upgrade()
    return f"store {store.url} answers; catalog {catalog.safe_url} at revision {revision} ({len(catalog.tables())} tables)"


STEPS = [("foundation", _foundation)]


@app.command("run")
def run() -> None:
    """Run every demo step that exists, in order, and print what each did."""
    results = []
    for name, step in STEPS:
        console.print(f"[bold]{name}[/bold] ...")
        started = time.perf_counter()
        outcome = step()
        results.append(StepResult(name, outcome, time.perf_counter() - started))
        console.print(f"  {outcome}")
    console.print("\n[bold]demo summary[/bold]")
    for result in results:
        console.print(f"  {result.step:<14} {result.seconds:6.2f}s  {result.outcome}")

"""What every command group shares: the console, the debug flag, the configured store and catalog, common tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from alliance.catalog import Catalog
    from alliance.settings import Settings
    from alliance.store import ObjectStore
    from sharding.redact import AffectedRun

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)


@dataclass
class CliState:
    debug: bool = False


state = CliState()


def settings() -> "Settings":
    from alliance.settings import load_settings

    return load_settings()


def store() -> "ObjectStore":
    from alliance.store import open_store

    return open_store(settings=settings())


def catalog(upgrade: bool = False) -> "Catalog":
    """The configured catalog; commands that write it call with upgrade=True so a first run needs no setup (the
    embedded SQLite catalog upgrades itself; a server database says to run `alliance catalog upgrade`)."""
    from alliance.catalog import Catalog

    cat = Catalog(settings().effective_catalog_url)
    if upgrade:
        cat.prepare()
    else:
        cat.ensure_current()
    return cat


def print_affected_runs(runs: Sequence[AffectedRun]) -> None:
    """The training runs that read a version holding revoked recordings (sharding's AffectedRun), or that none did."""
    if not runs:
        console.print("no training run read a version that held them")
        return
    from rich.table import Table

    table = Table(title="training runs that read a version holding them", title_justify="left")
    for column in ("run", "dataset", "through the encoder of", "steps", "checkpoints"):
        table.add_column(column, justify="right" if column == "steps" else "left")
    for run in runs:
        table.add_row(run.run, f"{run.dataset}@v{run.version}", run.via or "-", str(run.steps),
                      "\n".join(run.checkpoints) or "-")
    console.print(table)

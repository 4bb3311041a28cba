"""What every command group shares: the console, the debug flag, and the configured store and catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from alliance.catalog import Catalog
    from alliance.settings import Settings
    from alliance.store import ObjectStore

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

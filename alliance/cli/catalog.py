"""`alliance catalog ...`: create or upgrade the catalog database in place."""

from __future__ import annotations

import typer

from alliance.cli.common import console, settings

app = typer.Typer(help="The catalog database (SQLite by default, PostgreSQL by URL).", no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("heads", help="Target revision (default: every head).")) -> None:
    """Apply the schema migrations (safe to re-run)."""
    from alliance.catalog import Catalog

    cat = Catalog(settings().effective_catalog_url)
    before = cat.current_revision()
    after = cat.upgrade(revision)
    console.print(f"catalog {cat.safe_url}: {before or 'empty'} -> {after}")


@app.command("status")
def status() -> None:
    """Show the catalog's revision and row counts per table."""
    from sqlalchemy import func, select

    from alliance.catalog import Catalog
    from alliance.models import Base

    cat = Catalog(settings().effective_catalog_url)
    current, head = cat.current_revision(), cat.head_revision()
    console.print(f"catalog {cat.safe_url} ({cat.backend}) at {current or 'empty'}, code head {head}")
    if current != head:
        console.print("run `alliance catalog upgrade`", style="yellow")
        return
    with cat.session() as session:
        for table in Base.metadata.sorted_tables:
            count = session.execute(select(func.count()).select_from(table)).scalar_one()
            console.print(f"  {table.name:<20} {count:>8}")

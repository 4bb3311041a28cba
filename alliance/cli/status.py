"""`alliance status`: one screen with the store, the catalog, deliveries, consent, runs, dataset versions and
checkpoints."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from alliance.cli.common import console, settings


def _funnel(summary: dict) -> str:
    """A run's summary as 'in -> kept, refused: reason n, ...'."""
    if not summary:
        return ""
    parts = []
    for key in ("in", "recordings_in", "clips_in", "samples"):
        if key in summary:
            parts.append(f"{summary[key]} in")
            break
    for key in ("kept", "clips_written", "steps"):
        if key in summary:
            parts.append(f"{summary[key]} {'kept' if key != 'steps' else 'steps'}")
            break
    refused = summary.get("rejections") or summary.get("dropped") or {}
    if isinstance(refused, dict) and refused:
        parts.append("refused: " + ", ".join(f"{reason} {count}" for reason, count in sorted(refused.items())))
    return "; ".join(parts)


def show(limit: int = typer.Option(8, help="How many recent runs and versions to show.")) -> None:
    """Show the state of this Alliance installation."""
    from sqlalchemy import func, select

    from alliance.catalog import Catalog
    from alliance.models import DatasetVersion, Delivery, Partner, Recording, Run
    from alliance.store import open_store

    effective = settings()
    store = open_store(settings=effective)
    catalog = Catalog(effective.effective_catalog_url)
    console.print(f"[bold]store[/bold]    {store.url}")
    console.print(f"[bold]catalog[/bold]  {catalog.safe_url} ({catalog.backend}), revision "
                  f"{catalog.current_revision() or 'empty'}")
    if catalog.current_revision() is None:
        console.print("the catalog is empty: run `alliance catalog upgrade` or `make demo`", style="yellow")
        return

    with catalog.session() as session:
        partners = session.scalar(select(func.count()).select_from(Partner))
        deliveries = dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
        recordings = dict(session.execute(select(Recording.status, func.count()).group_by(Recording.status)).all())
        runs = session.scalars(select(Run).order_by(Run.started_at.desc()).limit(limit)).all()
        versions = session.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at.desc())
                                   .limit(limit)).all()

    console.print(f"[bold]partners[/bold] {partners}   [bold]deliveries[/bold] "
                  + (", ".join(f"{state} {n}" for state, n in sorted(deliveries.items())) or "none")
                  + "   [bold]recordings[/bold] "
                  + (", ".join(f"{state} {n}" for state, n in sorted(recordings.items())) or "none"))

    _consent_table(catalog, store)

    table = Table(title="recent runs", title_justify="left")
    for column in ("run", "kind", "status", "started", "funnel"):
        table.add_column(column)
    for run in runs:
        table.add_row(run.id, run.kind, run.status, f"{run.started_at:%Y-%m-%d %H:%M}", _funnel(run.summary or {}))
    console.print(table)

    table = Table(title="dataset versions", title_justify="left")
    for column in ("version", "samples", "MB", "hours", "parent"):
        table.add_column(column, justify="right" if column != "version" else "left")
    for version in versions:
        table.add_row(f"{version.name}@v{version.version}", str(version.samples), f"{version.bytes / 1e6:.1f}",
                      f"{version.hours:.3f}", f"v{version.parent_version}" if version.parent_version else "")
    console.print(table)

    table = Table(title="checkpoints", title_justify="left")
    for column in ("run", "dataset", "steps", "latest"):
        table.add_column(column)
    for info in store.list("checkpoints/"):
        if not info.key.endswith("/run.json"):
            continue
        record = json.loads(store.get_bytes(info.key))
        latest = (record.get("checkpoints") or [""])[-1]
        table.add_row(str(record.get("run")), f"{record.get('dataset')}@v{record.get('version')}",
                      str(record.get("steps", "")), latest)
    console.print(table)


def _consent_table(catalog, store) -> None:
    """Per partner: hours accepted, withdrawn (revoked) and expired (consent ended), from the catalog and the
    deliveries' manifests."""
    from sharding.records import consent_hours

    figures = consent_hours(catalog, store)
    if not figures:
        return
    table = Table(title="consent by partner (hours, recordings)", title_justify="left")
    for column in ("partner", "accepted", "withdrawn", "expired"):
        table.add_column(column, justify="left" if column == "partner" else "right")
    for partner, f in figures.items():
        table.add_row(partner, *(f"{f[f'{state}_hours']:.3f} h ({int(f[f'{state}_recordings'])})"
                                 for state in ("accepted", "withdrawn", "expired")))
    console.print(table)
    if any(f["withdrawn_recordings"] or f["expired_recordings"] for f in figures.values()):
        console.print("withdrawn or expired recordings leave dataset versions through `alliance consent sweep`",
                      style="dim")

"""`alliance datasets ...`: list, show, verify, diff, redact, gc and the contribution ledger of dataset versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from alliance.cli.common import catalog, console, print_affected_runs, store

app = typer.Typer(help="Inspect, check, redact and clean up dataset versions (datasets/NAME/vN/).",
                  no_args_is_help=True)


def _table(title: str, columns: list[str]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in ("samples", "shards", "bytes", "hours", "clips",
                                                               "share", "steps", "version", "checkpoints",
                                                               "withdrawn h", "expired h") else "left")
    return table


@app.command("list")
def list_versions(name: Optional[str] = typer.Argument(None, help="Only this dataset.")) -> None:
    """Every recorded version, with its figures; a version whose manifest is gone is flagged."""
    from sharding.layout import manifest_key
    from sharding.manifest import load_withdrawal
    from sharding.records import recorded_versions

    target = store()
    rows = recorded_versions(catalog(upgrade=True), name)
    if not rows:
        console.print("no dataset versions recorded yet; write one with "
                      "`alliance pipeline shard --name NAME --selection RUN`")
        return
    table = _table("dataset versions", ["dataset", "parent", "samples", "bytes", "hours", "state", "created"])
    for row in rows:
        state = "committed"
        if not target.exists(manifest_key(row.name, row.version)):
            state = "[red]manifest missing[/red]"
        elif load_withdrawal(target, row.name, row.version) is not None:
            state = "[yellow]withdrawn[/yellow]"
        table.add_row(f"{row.name}@v{row.version}", f"v{row.parent_version}" if row.parent_version else "",
                      f"{row.samples:,}", f"{row.bytes:,}", f"{row.hours:.3f}", state,
                      row.created_at.strftime("%Y-%m-%d %H:%M") if row.created_at else "")
    console.print(table)


@app.command("show")
def show(ref: str = typer.Argument(..., help="NAME@vN, or NAME for the latest version."),
         as_json: bool = typer.Option(False, "--json", help="Print the manifest itself.")) -> None:
    """A version's manifest: shards, samples, hours per partner and cluster, its source and parent."""
    from sharding.manifest import load_manifest, load_withdrawal
    from sharding.versions import resolve

    target = store()
    name, version = resolve(target, ref)
    manifest = load_manifest(target, name, version, allow_withdrawn=True)
    if as_json:
        console.print_json(manifest.to_json().decode())
        return
    console.print(f"[bold]{manifest.ref}[/bold]  {manifest.samples:,} samples in {len(manifest.shards)} shards, "
                  f"{manifest.bytes:,} bytes, {manifest.hours:.3f} h"
                  + (f", parent v{manifest.parent}" if manifest.parent else ""))
    from sharding.consent import version_purpose

    purpose = version_purpose(target, manifest)
    console.print(f"purpose: {purpose}" if purpose else "purpose: not recorded (sharded before purposes were); "
                  "`alliance datasets verify` checks its samples' consent")
    console.print(f"source: {json.dumps(manifest.source, sort_keys=True)}")
    console.print(f"config: {json.dumps(manifest.config, sort_keys=True)}")
    if manifest.redaction:
        console.print(f"redaction: removed {manifest.redaction['removed_samples']} samples of "
                      f"{len(manifest.redaction['revoked_recordings'])} revoked recordings")
    withdrawal = load_withdrawal(target, name, version)
    if withdrawal:
        console.print(f"[yellow]withdrawn[/yellow]: read {name}@v{withdrawal.successor}")
    table = _table("per partner", ["partner", "samples", "hours"])
    for partner, figures in manifest.partners.items():
        table.add_row(partner, f"{int(figures['samples']):,}", f"{figures['hours']:.4f}")
    console.print(table)
    console.print("clusters: " + ", ".join(f"{c}: {n}" for c, n in manifest.clusters.items()))


@app.command("verify")
def verify(ref: str = typer.Argument(..., help="NAME@vN"),
           decode: bool = typer.Option(False, "--decode", help="Also decode every mp4 (slower).")) -> None:
    """Every shard present with its sha256, every index row found in its shard, no sample whose consent expired
    or was withdrawn or does not cover the version's purpose; exits 1 on any problem."""
    from sharding.audit import verify_version
    from sharding.records import revoked_recordings
    from sharding.versions import resolve

    target = store()
    name, version = resolve(target, ref)
    cat = catalog(upgrade=True)
    try:
        revoked = revoked_recordings(cat)
    finally:
        cat.dispose()
    report = verify_version(target, name, version, decode=decode, revoked=revoked)
    for problem in report.problems:
        console.print(f"[red]{problem.reason}[/red] {problem.key}: {problem.detail}")
    verdict = "[green]ok[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]"
    console.print(f"{report.ref}: {report.shards} shards, {report.samples:,} samples, "
                  f"{report.bytes_read:,} bytes read: {verdict}")
    if not report.ok:
        raise typer.Exit(1)


@app.command("diff")
def diff(a: str = typer.Argument(..., help="NAME@vN"), b: str = typer.Argument(..., help="NAME@vM"),
         keys: bool = typer.Option(False, "--keys", help="List the clip ids too.")) -> None:
    """Samples added and removed from A to B, by partner."""
    from sharding.audit import diff_versions
    from sharding.versions import resolve

    target = store()
    result = diff_versions(target, resolve(target, a), resolve(target, b))
    table = _table(f"{result.a} -> {result.b}", ["partner", "added", "removed"])
    for partner in sorted(set(result.added) | set(result.removed)):
        table.add_row(partner, f"+{result.added.get(partner, 0)}", f"-{result.removed.get(partner, 0)}")
    console.print(table)
    console.print(f"{sum(result.added.values())} added ({result.added_hours:.4f} h), "
                  f"{sum(result.removed.values())} removed ({result.removed_hours:.4f} h), "
                  f"{result.unchanged} unchanged")
    if keys:
        for key in result.added_keys:
            console.print(f"+ {key}")
        for key in result.removed_keys:
            console.print(f"- {key}")


@app.command("redact")
def redact(ref: str = typer.Argument(..., help="NAME@vN to redact."),
           recording: list[str] = typer.Option([], "--recording",
                                               help="Also remove this recording id (besides the catalog's revoked)."),
           purge: bool = typer.Option(False, "--purge", help="Delete the affected shards of every version that "
                                      "held them and mark those versions withdrawn.")) -> None:
    """A new version without the samples of revoked recordings (catalog recordings.status == 'revoked');
    only affected shards are rewritten. Lists the training runs and checkpoints that saw them."""
    from sharding.records import redact_revoked

    target = store()
    report = redact_revoked(target, catalog(upgrade=True), ref, extra=recording, purge=purge)
    if report.version is None:
        console.print(f"{report.name}@v{report.parent} holds none of the revoked recordings: nothing to do")
    else:
        console.print(f"{report.name}@v{report.version}: removed {report.removed_samples} samples of "
                      f"{len(report.revoked_recordings)} revoked recording(s) "
                      f"({', '.join(f'{p}: {n}' for p, n in report.removed_by_partner.items())}); rewrote "
                      f"{len(report.rewritten_shards)} shard(s), reused {report.reused_shards}, dropped "
                      f"{report.dropped_shards}; report at reports/redactions/{report.name}/v{report.version}.json")
        if report.purged_shards:
            console.print(f"purged {len(report.purged_shards)} shard(s) of withdrawn versions")
    console.print(f"versions that held them: {', '.join(f'v{v}' for v in report.versions_containing) or 'none'}")
    print_affected_runs(report.affected_runs)


@app.command("gc")
def gc(name: Optional[str] = typer.Option(None, "--name", help="Only this dataset."),
       grace: float = typer.Option(3600.0, "--grace", help="Seconds an unfinished write is left alone "
                                   "(it may still be running)."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would go.")) -> None:
    """Remove what crashed writes left: unfinished versions, work files, unreferenced shards, open uploads."""
    from sharding.gc import gc as collect

    report = collect(store(), name, grace_s=grace, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for key in report.deleted:
        console.print(f"{verb} {key}", style="dim")
    console.print(f"{verb} {len(report.deleted)} object(s), {report.bytes_freed:,} bytes; aborted "
                  f"{report.aborted_uploads} abandoned upload(s)")
    for ref in report.kept_in_progress:
        console.print(f"left {ref}: its write started less than {grace:.0f}s ago (use --grace 0 if it crashed)")


@app.command("ledger")
def ledger(ref: str = typer.Argument(..., help="NAME@vN"),
           out: Optional[Path] = typer.Option(None, "--out", help="Also write the parquet files into this folder.")
           ) -> None:
    """Curated hours and clips per partner in a version, and which training runs consumed which version."""
    import pyarrow.parquet as pq

    from sharding.ledger import ledger as make_ledger
    from sharding.ledger import ledger_tables, write_ledger
    from sharding.records import revoked_recordings
    from sharding.versions import resolve

    target = store()
    cat = catalog(upgrade=True)
    try:
        revoked = revoked_recordings(cat)
    finally:
        cat.dispose()
    book = make_ledger(target, *resolve(target, ref), revoked=revoked)
    table = _table(f"contribution ledger of {book.ref}: {book.clips:,} clips, {book.hours:.4f} h",
                   ["partner", "clips", "hours", "share", "recordings", "deliveries", "withdrawn h", "expired h"])
    for credit in book.partners:
        table.add_row(credit.partner, f"{credit.clips:,}", f"{credit.hours:.4f}", f"{credit.share_of_hours:.1%}",
                      str(credit.recordings), str(credit.deliveries), f"{credit.withdrawn_hours:.4f}",
                      f"{credit.expired_hours:.4f}")
    console.print(table)
    console.print("withdrawn h / expired h: hours of the partner's clips whose consent was withdrawn or expired, "
                  "held here or removed by redaction on the way to this version", style="dim")
    if book.outside_consent_hours:
        console.print(f"[yellow]{book.ref} still holds {book.outside_consent_hours:.4f} h of withdrawn or expired "
                      f"consent[/yellow]: run `alliance consent sweep`")
    runs = _table("training runs on this dataset", ["run", "version", "steps", "checkpoints", "finished"])
    for run in book.runs:
        runs.add_row(run.run, f"v{run.version}" + (" (this)" if run.used_this_version else ""), str(run.steps),
                     str(run.checkpoints), run.finished_at or "running")
    console.print(runs if book.runs else "no training run has read this dataset yet")
    keys = write_ledger(target, book)
    console.print(f"wrote {', '.join(target.describe(k) for k in keys)}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for kind, data in zip(("partners", "runs"), ledger_tables(book)):
            pq.write_table(data, out / f"{book.name}-v{book.version}-{kind}.parquet")
        console.print(f"and into {out}")

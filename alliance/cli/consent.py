"""`alliance consent sweep|check`: keep dataset versions inside the consent partners gave (scope, expiry, exit)."""

from __future__ import annotations

from datetime import date
from typing import Optional

import typer

from alliance.cli.common import catalog, console, print_affected_runs, store

app = typer.Typer(help="Consent: redact expired or withdrawn recordings out of dataset versions (`sweep`, safe from "
                       "cron) and check a version against a purpose (`check`).", no_args_is_help=True)


def _day(text: Optional[str]) -> Optional[date]:
    from alliance.errors import ConfigError

    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"--as-of {text!r}: write a date as YYYY-MM-DD") from e


@app.command("sweep")
def sweep(dataset: list[str] = typer.Option([], "--dataset", help="Only this dataset (repeatable; default: every "
                                            "dataset the catalog records)."),
          purge: bool = typer.Option(False, "--purge", help="Also delete the affected shards of the versions that "
                                     "held them and mark those versions withdrawn (readers then refuse them)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Only say what it would redact."),
          as_of: Optional[str] = typer.Option(None, "--as-of", help="Judge expiry as of this day (YYYY-MM-DD; "
                                              "default today, UTC); with --dry-run: what will expire by then.")
          ) -> None:
    """Find recordings whose consent expired or was withdrawn in every dataset version, write a redacted version
    of the newest version(s) holding them, and list the training runs that read them. A second run writes
    nothing new."""
    from sharding.sweep import sweep as run_sweep

    cat = catalog(upgrade=True)
    try:
        report = run_sweep(store(), cat, dataset or None, today=_day(as_of), purge=purge, dry_run=dry_run)
    finally:
        cat.dispose()
    if not report.versions:
        console.print(f"consent sweep ({report.today}): no dataset version holds expired or withdrawn recordings")
        return
    from rich.table import Table

    table = Table(title=f"recordings outside their consent ({report.today})", title_justify="left")
    for column in ("partner", "recording", "why", "samples", "hours"):
        table.add_column(column, justify="right" if column in ("samples", "hours") else "left")
    for held in report.recordings:
        table.add_row(held.partner, held.recording, held.detail, str(held.samples), f"{held.seconds / 3600:.4f}")
    console.print(table)
    for finding in report.versions:
        then = (f"withdrawn, read v{finding.successor}" if finding.withdrawn else
                f"replaced by v{finding.successor}" if finding.successor else
                "would be redacted" if report.dry_run else "not redacted")
        console.print(f"{finding.ref}: holds {len(finding.held)} of them, "
                      f"{sum(h.samples for h in finding.held)} sample(s); {then}")
    for redaction in report.redactions:
        console.print(f"wrote {redaction.name}@v{redaction.version} from v{redaction.parent}: removed "
                      f"{redaction.removed_samples} sample(s) ({', '.join(f'{p}: {n}' for p, n in redaction.removed_by_partner.items())}); "
                      f"report reports/redactions/{redaction.name}/v{redaction.version}.json")
    for ref in report.purged:
        console.print(f"purged and withdrew {ref}")
    if not report.wrote:
        console.print("nothing new written" + (" (dry run)" if report.dry_run else ": every such version already "
                                               "has a redacted successor"))
    print_affected_runs(report.affected_runs)


@app.command("check")
def check(ref: str = typer.Argument(..., help="NAME@vN, or NAME for the latest version."),
          purpose: str = typer.Option("pretraining", "--purpose", help="pretraining, evaluation, research or "
                                      "commercial.")) -> None:
    """Exit 1 unless the version may be used for PURPOSE today (what `alliance train` checks for pretraining)."""
    from sharding.consent import require_purpose
    from sharding.records import revoked_recordings
    from sharding.versions import resolve

    target = store()
    name, version = resolve(target, ref)
    cat = catalog(upgrade=True)
    try:
        revoked = revoked_recordings(cat)
    finally:
        cat.dispose()
    manifest = require_purpose(target, name, version, purpose, revoked=revoked)
    console.print(f"{manifest.ref}: every sample's consent allows {purpose} today")

"""`alliance deliver DIR --to URL --token T` (and `--check DIR`): the partner CLI."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from alliance.cli.common import console


def _print_problems(problems: list[dict]) -> None:
    from rich.table import Table

    table = Table("file", "reason", "detail", "how to fix", show_lines=False)
    for p in problems:
        table.add_row(p.get("path", ""), p.get("reason", ""), p.get("detail", ""), p.get("fix", ""))
    console.print(table)


def deliver(folder: Path = typer.Argument(..., exists=True, file_okay=False, help="The folder to deliver."),
            to: str = typer.Option("", "--to", help="The delivery service URL, e.g. https://alliance.example."),
            token: str = typer.Option("", "--token", envvar="ALLIANCE_TOKEN", help="Your API token (or ALLIANCE_TOKEN)."),
            check: bool = typer.Option(False, "--check", help="Only validate locally; upload nothing."),
            wait: float = typer.Option(600.0, help="Seconds to wait for the verdict."),
            quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Deliver every video in FOLDER (with its `{stem}.{stream}.csv|npy` sensor files) under the folder's delivery.toml.

    The manifest is built from the folder, files are hashed (cached) and uploaded in parts; an interrupted delivery
    resumes where it stopped when run again. Exit status: 0 accepted, 3 partly or wholly refused, 1 error."""
    progress = not quiet and os.isatty(1)
    if check:
        from partners.client import check as check_folder

        manifest, assessment = check_folder(folder, progress=progress)
        problems = [{"path": f.path, "reason": p.reason, "detail": p.detail, "fix": p.fix}
                    for f in assessment.files for p in f.problems]
        problems += [{"path": "manifest.json", "reason": p.reason, "detail": p.detail, "fix": ""}
                     for p in assessment.delivery_problems]
        refused = {f.recording for f in assessment.files if f.verdict == "rejected"}
        console.print(f"delivery {manifest.delivery}: {len(manifest.recordings)} recordings, "
                      f"{len(manifest.recordings) - len(refused)} would be accepted, {len(refused)} refused")
        if problems:
            _print_problems(problems)
            raise SystemExit(3)  # not typer.Exit: the exit status must survive the CLI's non-standalone mode
        console.print("every file passes the contract's checks: deliver it with --to URL --token TOKEN")
        return
    if not to or not token:
        raise typer.BadParameter("give --to URL and --token (or ALLIANCE_TOKEN), or use --check")
    from partners.client import deliver as deliver_folder

    verdict = deliver_folder(folder, to, token, progress=progress, wait_s=wait)
    style = {"accepted": "green", "partial": "yellow", "rejected": "red"}.get(verdict.status, "")
    console.print(f"delivery {verdict.delivery} ({verdict.delivery_id}): [{style}]{verdict.status}[/{style}], "
                  f"{verdict.recordings_accepted} recordings accepted, {verdict.recordings_rejected} refused; "
                  f"sent {verdict.uploaded_bytes} bytes, {verdict.skipped_parts} parts were already there")
    if verdict.problems:
        _print_problems(verdict.problems)
    console.print(f"report: {verdict.report_url} (stored at {verdict.report_key})")
    if verdict.status != "accepted":
        raise SystemExit(3)

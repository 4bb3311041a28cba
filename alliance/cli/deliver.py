"""`alliance deliver DIR --to URL` (token from ALLIANCE_TOKEN or --token-file) and `--check DIR`: the partner CLI."""

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


def _problems_of(e) -> list[dict]:
    """A refusal's problems as table rows (path, reason, detail, fix)."""
    from partners.report import fix_for

    rows = []
    for p in getattr(e, "problems", None) or []:
        reason = p.get("reason") or getattr(e, "reason", "")
        rows.append({"path": p.get("path") or p.get("field", ""), "reason": reason,
                     "detail": p.get("detail", ""), "fix": p.get("fix") or fix_for(reason)})
    return rows


def _read_token(token_file: Path | None) -> str:
    """The API token from --token-file or ALLIANCE_TOKEN: never from the command line, where every user of the
    machine can read it in the process list."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise typer.BadParameter(f"token_file_unreadable: {token_file}: {e.strerror}: give a readable file that "
                                     "holds only the token (chmod 600)") from None
        return token
    return os.environ.get("ALLIANCE_TOKEN", "").strip()


def deliver(folder: Path = typer.Argument(..., exists=True, file_okay=False, help="The folder to deliver."),
            to: str = typer.Option("", "--to", help="The delivery service URL, e.g. https://alliance.example."),
            token_file: Path = typer.Option(None, "--token-file", dir_okay=False,
                                            help="A file holding your API token (or set ALLIANCE_TOKEN)."),
            token: str = typer.Option("", "--token", hidden=True, help="Refused: a token in the command line is "
                                      "readable by every user in the process list."),
            check: bool = typer.Option(False, "--check", help="Only validate locally; upload nothing."),
            trust_cache: bool = typer.Option(False, "--trust-cache", help="With --check: skip re-hashing files "
                                             "whose size, times and inode match the hash cache."),
            wait: float = typer.Option(600.0, help="Seconds to wait for the verdict."),
            quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Deliver every video in FOLDER (with its `{stem}.{stream}.csv|npy|txt` sensor files) under the folder's
    delivery.toml. The token comes from ALLIANCE_TOKEN or --token-file, never from the command line.

    The manifest is built from the folder (symbolic links are refused, never followed), files are hashed (cached)
    and uploaded in parts; an interrupted delivery resumes where it stopped when run again.
    Exit status: 0 accepted, 3 partly or wholly refused, 1 error."""
    from partners.errors import ContractError, PartnerError

    progress = not quiet and os.isatty(1)
    if token:
        console.print("[red]error:[/red] token_on_command_line: a token given as an argument is readable by every "
                      "user in the process list: put it in ALLIANCE_TOKEN or a file (chmod 600) passed with "
                      "--token-file, and rotate this one (`alliance partners rotate`)", highlight=False,
                      soft_wrap=True)
        raise SystemExit(2)
    try:
        if check:
            _check(folder, progress, trust_cache)
            return
        api_token = _read_token(token_file)
        if not to or not api_token:
            raise typer.BadParameter("missing_token_or_url: give --to URL, and the token in ALLIANCE_TOKEN or "
                                     "--token-file; or use --check")
        _deliver(folder, to, api_token, progress, wait)
    except PartnerError as e:
        console.print(f"[red]error:[/red] {e.reason}: {e}", highlight=False, soft_wrap=True)
        problems = _problems_of(e)
        if len(problems) > 1 or (problems and problems[0].get("path")):
            _print_problems(problems)
        refused_files = isinstance(e, ContractError) and any(p.get("path") for p in e.problems)
        raise SystemExit(3 if refused_files else 1) from None


def _check(folder: Path, progress: bool, trust_cache: bool) -> None:
    from partners.folder import check as check_folder

    manifest, assessment = check_folder(folder, progress=progress, trust_cache=trust_cache)
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
    console.print("every file passes the contract's checks: deliver it with --to URL (token in ALLIANCE_TOKEN "
                  "or --token-file)")


def _deliver(folder: Path, to: str, token: str, progress: bool, wait: float) -> None:
    import httpx

    from partners.client import deliver as deliver_folder
    from partners.errors import DeliveryFailed

    try:
        verdict = deliver_folder(folder, to, token, progress=progress, wait_s=wait)
    except httpx.HTTPError as e:
        raise DeliveryFailed("service_unreachable", f"{to}: {type(e).__name__.lower()}: {e}: check the URL and "
                             "your network, then run the same command again (it resumes)") from None
    style = {"accepted": "green", "partial": "yellow", "rejected": "red"}.get(verdict.status, "")
    console.print(f"delivery {verdict.delivery} ({verdict.delivery_id}): [{style}]{verdict.status}[/{style}], "
                  f"{verdict.recordings_accepted} recordings accepted, {verdict.recordings_rejected} refused; "
                  f"sent {verdict.uploaded_bytes} bytes, {verdict.skipped_parts} parts were already there")
    if verdict.problems:
        _print_problems(verdict.problems)
    console.print(f"report: {verdict.report_url} (stored at {verdict.report_key})")
    if verdict.status != "accepted":
        raise SystemExit(3)

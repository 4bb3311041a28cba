"""`alliance partners add|rotate|revoke|list|audit`: partner accounts and their API tokens."""

from __future__ import annotations

import typer

from alliance.cli.common import catalog, console, store

app = typer.Typer(help="Partner accounts and API tokens (stored as hashes; a token is shown once).",
                  no_args_is_help=True)


def _show_token(issued, what: str) -> None:
    console.print(f"{what} for partner [bold]{issued.partner}[/bold] (token id {issued.token_id}); "
                  "it is shown only now, store it safely:")
    console.print(issued.token, style="bold green")


def _store():
    """The object store, to abort a revoked partner's open uploads; None (with a warning) when it is unreachable."""
    try:
        return store()
    except Exception as e:  # the revocation itself must not wait for the store
        console.print(f"[yellow]warning:[/yellow] store unreachable ({type(e).__name__}): open uploads are not "
                      "aborted now; their part URLs expire within the service's url_expiry_s")
        return None


@app.command("add")
def add(name: str = typer.Argument(..., help="Partner slug, e.g. glassco."),
        display_name: str = typer.Option("", "--display-name", help="Human-readable name.")) -> None:
    """Create a partner and print its first API token."""
    from partners.accounts import add_partner

    _show_token(add_partner(catalog(upgrade=True), name, display_name), "created")


@app.command("rotate")
def rotate(name: str = typer.Argument(...),
           keep_old: bool = typer.Option(False, "--keep-old", help="Keep the old tokens valid (a grace period).")) -> None:
    """Issue a new token; the old ones stop working now unless --keep-old."""
    from partners.accounts import rotate_token

    _show_token(rotate_token(catalog(upgrade=True), name, revoke_old=not keep_old, store=_store()), "new token")


@app.command("revoke")
def revoke(name: str = typer.Argument(...),
           token_id: str = typer.Option("", "--token-id", help="Revoke only this token (default: all)."),
           withdraw_data: bool = typer.Option(False, "--withdraw-data", help="The partner leaves and takes its data: "
                                              "also mark all its recordings revoked; `alliance consent sweep` then "
                                              "removes them from dataset versions.")) -> None:
    """Revoke a partner's tokens: its requests get 401 from then on."""
    from partners.accounts import revoke_tokens

    count = revoke_tokens(catalog(upgrade=True), name, token_id or None, store=_store())
    console.print(f"revoked {count} token(s) of {name}")
    if withdraw_data:
        from sharding.records import withdraw_partner

        withdrawn = withdraw_partner(catalog(upgrade=True), name, "partner exit: all data withdrawn "
                                     "(alliance partners revoke --withdraw-data)")
        console.print(f"withdrew {len(withdrawn)} recording(s) of {name}; run `alliance consent sweep` to write "
                      f"dataset versions without them")


@app.command("list")
def list_() -> None:
    """Partners with their active and revoked token counts."""
    from rich.table import Table

    from partners.accounts import list_partners

    table = Table("partner", "name", "active tokens", "revoked tokens", "created")
    for p in list_partners(catalog(upgrade=True)):
        table.add_row(p.partner, p.display_name, str(p.active_tokens), str(p.revoked_tokens),
                      p.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command("audit")
def audit(name: str = typer.Argument(...), limit: int = typer.Option(50, help="How many recent events.")) -> None:
    """The partner's recent actions on the delivery service, newest first."""
    from sqlalchemy import select

    from alliance.models import AuditEvent

    with catalog(upgrade=True).session() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.partner_id == name)
                               .order_by(AuditEvent.id.desc()).limit(limit)).all()
        for row in rows:
            console.print(f"{row.at:%Y-%m-%d %H:%M:%S}  {row.status}  {row.action:<20} {row.target or ''}")

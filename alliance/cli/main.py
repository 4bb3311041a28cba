"""Entry point of the `alliance` command: registers the command groups and turns errors into one line."""

from __future__ import annotations

import sys

import click
import typer

from alliance.cli import catalog, config, demo, pipeline, status, store
from alliance.cli import datasets as datasets_cli
from alliance.cli import train as train_cli
from alliance.cli import contract as contract_cli, deliver as deliver_cli, partners as partners_cli, serve as serve_cli
from alliance.cli import consent as consent_cli
from alliance.cli.common import console, state

app = typer.Typer(
    name="alliance",
    help="Alliance: partner deliveries to curated, versioned WebDataset shards and the JEPA loop that streams them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails.")) -> None:
    state.debug = debug


app.command("config", help="Print the effective configuration, secrets masked.")(config.show)
app.command("status", help="One screen: store, catalog, deliveries, runs, dataset versions, checkpoints.")(status.show)
app.add_typer(store.app, name="store")
app.add_typer(catalog.app, name="catalog")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(datasets_cli.app, name="datasets")
app.add_typer(demo.app, name="demo")
app.add_typer(partners_cli.app, name="partners")
app.add_typer(consent_cli.app, name="consent")
app.add_typer(contract_cli.app, name="contract")
app.command("serve", help="Serve the partner delivery API (FastAPI + uvicorn), OpenAPI at /docs.")(serve_cli.serve)
app.command("deliver", help="Deliver a folder to the delivery service, or --check it locally.")(deliver_cli.deliver)
app.add_typer(train_cli.app, name="train")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; an error prints `error: ...` on one line and exits 1 (or 2 for usage errors)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="alliance", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) is returned, not raised, outside standalone mode
            sys.exit(code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        console.print("aborted", style="red")
        sys.exit(130)
    except Exception as e:  # every failure ends as one readable line; --debug shows where it came from
        if state.debug or "--debug" in (argv or sys.argv):
            raise
        from alliance.errors import AllianceError

        message = str(e) if isinstance(e, AllianceError) else f"{type(e).__name__}: {e}"
        console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        if not isinstance(e, AllianceError):
            console.print("run with --debug for the traceback", style="dim")
        sys.exit(1)


if __name__ == "__main__":
    main()

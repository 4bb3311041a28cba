"""`alliance serve`: the partner delivery service (FastAPI + uvicorn), OpenAPI at /docs."""

from __future__ import annotations

import typer

from alliance.cli.common import console, settings


def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
          port: int = typer.Option(8080, help="Port to listen on."),
          part_size_mb: int = typer.Option(8, help="Upload part size in MiB (S3 needs >= 5)."),
          max_file_gb: float = typer.Option(50.0, help="Largest file accepted, in GiB."),
          max_delivery_gb: float = typer.Option(500.0, help="Largest delivery accepted, in GiB."),
          rate: float = typer.Option(20.0, help="Requests per second per token (sustained)."),
          burst: int = typer.Option(200, help="Requests per token allowed in a burst.")) -> None:
    """Serve the delivery API. With a file:// store, parts are uploaded to this service (PUT /uploads/...)."""
    from alliance.catalog import Catalog
    from partners.server import run_foreground
    from partners.service import ServiceConfig

    config = ServiceConfig(part_size=part_size_mb << 20, max_file_bytes=int(max_file_gb * (1 << 30)),
                           max_delivery_bytes=int(max_delivery_gb * (1 << 30)), rate_per_s=rate, rate_burst=burst)
    effective = settings()
    Catalog(effective.effective_catalog_url).prepare().dispose()  # an old server database: run `catalog upgrade`
    console.print(f"delivery service on http://{host}:{port} (docs at /docs), store {effective.effective_store_url}")
    run_foreground(effective, config, host, port)

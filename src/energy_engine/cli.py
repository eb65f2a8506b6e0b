"""The `energy-engine` command: serve the API, apply migrations."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import warnings
from typing import Annotated

import typer
import uvicorn

from energy_engine import db
from energy_engine.app import create_app
from energy_engine.settings import Settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the API (with an embedded PostgreSQL when DATABASE_URL is not set)."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    # uvicorn drains and shuts down on SIGTERM, then re-raises the signal with the handler
    # that was there before; make that handler report the graceful stop as success.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        loop="uvloop",
        http="httptools",
        access_log=False,  # one line per reading at 20,000 devices is noise, not observability
    )


@cli.command()
def migrate() -> None:
    """Apply pending migrations and create the history partitions, then exit."""
    settings = Settings()

    async def run(url: str) -> dict[str, object]:
        pool = await db.create_pool(url, settings.model_copy(update={"pool_min_size": 1}))
        try:
            async with pool.acquire() as conn:
                return await db.prepare(conn, settings)
        finally:
            await pool.close()

    with db.database_url(settings) as url:
        outcome = asyncio.run(run(url))
    typer.echo(f"migrations applied: {outcome['applied'] or 'none pending'}")
    typer.echo(f"partitions created: {outcome['partitions_created']}")


def main() -> None:
    """Console-script entry point."""
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    cli()


if __name__ == "__main__":
    main()

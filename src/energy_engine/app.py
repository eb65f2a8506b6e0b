"""The ASGI application: `create_app(settings)` wires routers, errors and the pool lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from energy_engine import __version__, db
from energy_engine.asgi import BodyLimit
from energy_engine.deps import PoolDep
from energy_engine.errors import install_error_handlers, install_outage_handlers, log_outage, outage
from energy_engine.ingest.writer import GroupWriter
from energy_engine.observability import logs, metrics
from energy_engine.observability.requests import RequestLog
from energy_engine.rollups import store as rollups
from energy_engine.routing import LEAN_ROUTES, ROUTERS, LeanRoutes, openapi
from energy_engine.settings import Settings

log = logging.getLogger(__name__)


async def _maintain_partitions(pool: db.Pool, settings: Settings) -> None:
    """Keep the next days' partitions in place so ingest never takes the on-demand path."""
    while True:
        await asyncio.sleep(settings.partition_upkeep_every.total_seconds())
        try:
            async with pool.acquire() as conn:
                await db.ensure_partitions_ahead(conn, settings)
        except Exception as exc:  # the next round retries; ingest creates them on demand anyway
            _log_failure("partition maintenance", exc)


async def _refresh_rollups(pool: db.Pool, settings: Settings) -> None:
    """Keep the hourly rollups caught up (any process may run it; one at a time does)."""
    while True:
        try:
            await rollups.refresh(pool, settings, datetime.now(UTC))
        except Exception as exc:  # the next round retries; analytics read raw rows meanwhile
            _log_failure("rollup refresh", exc)
        await asyncio.sleep(settings.rollup_refresh_every.total_seconds())


def _log_failure(task: str, exc: Exception) -> None:
    """A background round that failed: one line for an outage, the traceback for a bug."""
    found = outage(exc)
    if found is None:
        log.exception("%s failed", task)
    else:
        log_outage(task, found)


def create_app(settings: Settings) -> FastAPI:
    """The engine's API for `settings`; nothing connects until the lifespan starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with db.database_url(settings) as url:
            pool = await db.create_pool(url, settings)
            writer_pool: db.Pool | None = None
            try:
                async with pool.acquire() as conn:
                    await db.prepare(conn, settings)
                    if await rollups.match_rules(conn, settings):
                        log.warning("energy rules changed: hourly rollups are being rebuilt")
                app.state.pool = pool
                writer_pool = await db.create_writer_pool(url, settings)
                writer = GroupWriter(
                    writer_pool,
                    writers=settings.writer_connections,
                    max_queued=settings.max_queued_readings,
                    max_flush=settings.max_flush_readings,
                )
                writer.start()
                app.state.writer = writer
                app.state.pools = {"request": pool, "writer": writer_pool}
                background = [
                    asyncio.create_task(_maintain_partitions(pool, settings)),
                    asyncio.create_task(_refresh_rollups(pool, settings)),
                ]
                if metrics.MULTIPROCESS:  # another process may answer the scrape
                    sampler = metrics.sample_forever(app.state.pools, lambda: writer.queued)
                    background.append(asyncio.create_task(sampler))
                yield
                await writer.close()  # commit everything queued before the pools go
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            finally:
                if writer_pool is not None:
                    await writer_pool.close()
                await pool.close()

    app = FastAPI(
        title="Energy Ingestion Engine",
        version=__version__,
        summary="Smart-meter and EV telemetry: ingestion, live status, charging efficiency.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_body_bytes, routers=ROUTERS)
    install_outage_handlers(app)
    # Added after BodyLimit, so it runs before: a lean route reaches neither BodyLimit nor
    # FastAPI's router.
    app.add_middleware(LeanRoutes, settings=settings, routes=LEAN_ROUTES)
    # Added last, so it runs first: every request gets its id, latency and log line.
    app.add_middleware(
        RequestLog,
        lean=[route.declared for route in LEAN_ROUTES],
        log_requests=settings.request_log,
    )
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/health/live", tags=["operations"])
    async def live() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/health/ready", tags=["operations"], responses={503: {"description": "Not ready"}})
    async def ready(pool: PoolDep) -> Response:
        """PostgreSQL answers and every migration is applied. `rollupQuarantinedHours`: the
        device-hours the rollup refresher could not aggregate (read from raw rows instead,
        still exact; see rollups.store); not a reason to take the engine out of service."""
        try:
            async with pool.acquire() as conn:
                pending = await db.pending_migrations(conn)
                quarantined = None if pending else await rollups.quarantined(conn)
        except db.MigrationMismatch as exc:
            return _status(503, str(exc))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            found = outage(exc)
            if found is None:  # e.g. a role without rights: not ready either, and why
                return _status(503, f"database error: {type(exc).__name__}: {exc}")
            return _status(503, "database unreachable: " + found.reason)
        if pending:
            return _status(503, f"{pending} migrations pending")
        return _status(200, "ok", rollupQuarantinedHours=quarantined)

    app.openapi = lambda: openapi(app, LEAN_ROUTES)  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app for settings read from the environment (one `serve --workers` process)."""
    settings = Settings()
    logs.configure(settings)
    return create_app(settings)


def _status(code: int, status: str, **more: object) -> Response:
    return Response(
        orjson.dumps({"status": status, **more}), status_code=code, media_type="application/json"
    )

"""The ASGI application: `create_app(settings)` wires routers, errors and the pool lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from nats.js import JetStreamContext
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from energy_engine import __version__, db
from energy_engine.asgi import BodyLimit
from energy_engine.auth.cache import KeyCache
from energy_engine.auth.middleware import HEALTH_PATHS, Auth, declare_security
from energy_engine.dashboard import routes as dashboard
from energy_engine.deps import PoolDep
from energy_engine.errors import install_error_handlers, install_outage_handlers, log_outage, outage
from energy_engine.ingest.writer import GroupWriter, Writer
from energy_engine.lifecycle import maintenance
from energy_engine.mqtt.subscriber import Subscriber
from energy_engine.observability import logs, metrics
from energy_engine.observability.requests import RequestLog
from energy_engine.process import startup_frozen
from energy_engine.queue import stream
from energy_engine.queue.publisher import Publisher
from energy_engine.rollups import store as rollups
from energy_engine.routing import LEAN_ROUTES, ROUTERS, LeanRoutes, openapi, served_routes
from energy_engine.settings import DocsAccess, IngestMode, Settings

log = logging.getLogger(__name__)


async def _maintain(pool: db.Pool, settings: Settings) -> None:
    """Keep the next days' partitions in place (so ingest never takes the on-demand path) and
    apply retention; every process runs the loop, one at a time does a round's work."""
    # Start-up has just created the partitions. With a retention period the first round runs
    # at once: processes restarted more often than the interval would otherwise never apply it.
    wait = settings.history_retention is None
    while True:
        if wait:
            await asyncio.sleep(settings.partition_upkeep_every.total_seconds())
        wait = True
        try:
            await maintenance.maintain(pool, settings, datetime.now(UTC))
        except Exception as exc:  # the next round retries; ingest creates partitions on demand
            _log_failure("maintenance", exc)


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
            read_pool: db.Pool | None = None
            try:
                async with pool.acquire() as conn:
                    await db.prepare(conn, settings)
                    if await rollups.match_rules(conn, settings):
                        log.warning("energy rules changed: hourly rollups are being rebuilt")
                app.state.pool = pool
                if settings.database_read_url is not None:
                    read_pool = await db.create_pool(settings.database_read_url, settings)
                app.state.read_pool = read_pool or pool
                reads = {} if read_pool is None else {"read": read_pool}
                writer: Writer
                if settings.ingest_mode is IngestMode.QUEUE:
                    # The workers (`energy-engine worker`) write; this process publishes.
                    nc = await stream.connect(settings, "energy-engine-api")
                    js = stream.jetstream(nc, settings)
                    try:
                        await stream.ensure_stream(js, settings)
                    except BaseException:
                        await nc.close()
                        raise
                    writer = await Publisher.open(nc, settings)
                    app.state.jetstream = js
                    app.state.pools = {"request": pool, **reads}
                else:
                    writer_pool = await db.create_writer_pool(url, settings)
                    writer = group = GroupWriter(
                        writer_pool,
                        writers=settings.writer_connections,
                        max_queued=settings.max_queued_readings,
                        max_flush=settings.max_flush_readings,
                    )
                    group.start()
                    app.state.jetstream = None
                    app.state.pools = {"request": pool, "writer": writer_pool, **reads}
                app.state.writer = writer
                background = [
                    asyncio.create_task(_maintain(pool, settings)),
                    asyncio.create_task(_refresh_rollups(pool, settings)),
                ]
                if settings.auth:
                    await keys.refresh(pool)  # before the first request is answered
                    background.append(asyncio.create_task(keys.keep_fresh(pool)))
                if metrics.MULTIPROCESS:  # another process may answer the scrape
                    sampler = metrics.sample_forever(app.state.pools, lambda: writer.queued)
                    background.append(asyncio.create_task(sampler))
                subscriber: Subscriber | None = None
                if settings.mqtt_url is not None:
                    subscriber = Subscriber(settings, writer)
                    subscriber.start()  # connects in the background, retrying with backoff
                app.state.mqtt = subscriber
                try:
                    with startup_frozen():
                        yield
                finally:  # the subscriber's connection must not outlive the app
                    if subscriber is not None:  # its messages in flight go through the writer
                        await subscriber.close()
                await writer.close()  # commit (or publish) everything queued before the pools go
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            finally:
                for other in (writer_pool, read_pool):
                    if other is not None:
                        await other.close()
                await pool.close()

    docs = settings.docs is not DocsAccess.OFF
    app = FastAPI(
        title="Energy Ingestion Engine",
        version=__version__,
        summary="Smart-meter and EV telemetry: ingestion, live status, charging efficiency.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks look their providers up on every request (2.4 µs
        # in process); the engine exports its own Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # FastAPI's own pages load their scripts from a CDN: /docs is served offline below,
        # and ReDoc, which no installed package ships, is left out.
        openapi_url="/openapi.json" if docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    keys = KeyCache(settings)
    app.state.keys = keys
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_body_bytes, routers=ROUTERS)
    install_outage_handlers(app)
    # Added after BodyLimit, so it runs before: a lean route reaches neither BodyLimit nor
    # FastAPI's router.
    app.add_middleware(LeanRoutes, settings=settings, routes=LEAN_ROUTES)
    # The dashboard's page and files hold no data: its API calls carry the operator's key.
    open_paths = set(HEALTH_PATHS) | {dashboard.PAGE_PATH}
    open_prefixes = (dashboard.STATIC_PATH + "/",)
    if settings.docs is DocsAccess.OPEN:
        open_paths |= {"/openapi.json", "/docs"}
    if settings.auth:
        # In front of the lean routes, so no handler runs and no body is read for a refusal.
        # The routes are read when the first request builds the middleware stack, once every
        # route below is in place.
        app.add_middleware(
            Auth,
            keys=keys,
            routes=_RouteTable(app),
            open_paths=open_paths,
            open_prefixes=(
                (*open_prefixes, "/docs/") if settings.docs is DocsAccess.OPEN else open_prefixes
            ),
        )
    if settings.cors_origins:
        # Outside Auth: a browser's preflight carries no key, and refusals need CORS headers
        # for the page to read them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding", "X-Request-ID"],
            expose_headers=["Retry-After", "WWW-Authenticate", "X-Request-ID"],
            max_age=600,
        )
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
        still exact; see rollups.store); not a reason to take the engine out of service.
        Queue mode: JetStream answers (`queueLag`: messages not yet committed by the workers);
        PostgreSQL unreachable is then reported (`database`) but not a reason either, since
        ingest goes on into the queue. With DATABASE_READ_URL, `readDatabase` tells whether the
        replica answers; not a reason either: ingest does not use it."""
        replica = await _replica(app.state.read_pool, pool)
        if app.state.jetstream is not None:
            return await _queue_ready(app.state.jetstream, pool, settings, replica)
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
        return _status(200, "ok", rollupQuarantinedHours=quarantined, **replica)

    if docs:
        _install_docs(app)
    dashboard.install(app)

    def document() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = openapi(app, LEAN_ROUTES)  # cached as app.openapi_schema
        if settings.auth:
            declare_security(doc, open_paths)
        return doc

    app.openapi = document  # type: ignore[method-assign]
    return app


class _RouteTable:
    """Every route `app` serves, read when iterated (see Auth)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def __iter__(self) -> Iterator[APIRoute]:
        return iter(served_routes(self.app))


# Swagger UI's files, from the swagger-ui-bundle-v2 wheel (maintained by the spec-first
# maintainers of swagger-ui-bundle, which stopped at Swagger UI 4): /docs needs no internet.
# Wherever /docs is open, this prefix must be open too (the page loads its script from it).
DOCS_ASSETS = "/docs/assets"


def _install_docs(app: FastAPI) -> None:
    """GET /docs (Swagger UI) and its assets, served by the engine itself."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(str(swagger_ui_path))), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def app_from_environment() -> FastAPI:
    """The app for settings read from the environment (one `serve --workers` process)."""
    settings = Settings()
    logs.configure(settings)
    return create_app(settings)


async def _replica(read_pool: db.Pool, pool: db.Pool) -> dict[str, str]:
    """`readDatabase` for readiness: whether the read routes' replica answers; nothing when they
    read the primary."""
    if read_pool is pool:
        return {}
    try:
        async with read_pool.acquire(timeout=2.0) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        found = outage(exc)
        if found is None:
            return {"readDatabase": f"error: {type(exc).__name__}: {exc}"}
        return {"readDatabase": "unreachable: " + found.reason}
    return {"readDatabase": "ok"}


async def _queue_ready(
    js: JetStreamContext, pool: db.Pool, settings: Settings, replica: dict[str, str]
) -> Response:
    """Readiness in queue mode: the stream's consumer answers; the database's state told."""
    try:
        lag = await stream.lag(js, settings)
    except Exception as exc:  # any failure to answer means not ready
        return _status(503, f"queue unavailable: {type(exc).__name__}: {exc}")
    database = "ok"
    try:
        async with pool.acquire(timeout=2.0) as conn:
            pending = await db.pending_migrations(conn)
    except db.MigrationMismatch as exc:
        return _status(503, str(exc))
    except Exception as exc:
        found = outage(exc)
        if found is None:
            raise
        database = "unreachable: " + found.reason
    else:
        if pending:
            return _status(503, f"{pending} migrations pending")
    return _status(
        200,
        "ok",
        database=database,
        **replica,
        queueLag={
            "messages": lag.total,
            "pending": lag.pending,
            "unacknowledged": lag.unacknowledged,
        },
    )


def _status(code: int, status: str, **more: object) -> Response:
    return Response(
        orjson.dumps({"status": status, **more}), status_code=code, media_type="application/json"
    )

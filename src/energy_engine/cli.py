"""The `energy-engine` command: serve the API, apply migrations and retention, manage API
keys."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import nats.errors
import typer
import uvicorn
from pydantic import ValidationError

from energy_engine import db, server
from energy_engine.app import create_app
from energy_engine.auth import keyfile
from energy_engine.auth import keys as api_keys
from energy_engine.auth import store as key_store
from energy_engine.bounds import duration_text
from energy_engine.lifecycle import maintenance
from energy_engine.mqtt.client import Broker
from energy_engine.observability import logs, metrics
from energy_engine.queue import worker as queue_worker
from energy_engine.settings import Settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_cli = typer.Typer(
    no_args_is_help=True,
    help="Create, list and revoke API keys (with DATABASE_URL, or the embedded PostgreSQL).",
)
cli.add_typer(keys_cli, name="keys")


class LogLevel(StrEnum):
    """The log levels `serve` takes."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


def _settings() -> Settings:
    """The settings from the environment, or one line per invalid one and exit status 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            name = "ENERGY_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"error: {name}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


def _check_database(settings: Settings) -> None:
    """One line and exit status 1 when DATABASE_URL or DATABASE_READ_URL names a PostgreSQL
    that cannot be used (the embedded server, without DATABASE_URL, is the engine's own)."""
    for name, url in (
        ("DATABASE_URL", settings.database_url),
        ("DATABASE_READ_URL", settings.database_read_url),
    ):
        if not url:
            continue
        try:
            asyncio.run(db.check_reachable(url))
        except db.DatabaseUnavailable as exc:
            typer.echo(f"error: {exc}; check {name}", err=True)
            raise typer.Exit(1) from None


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter("give an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018  # raises on a port out of range or not a number
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return url


def _mqtt_url(url: str | None) -> str | None:
    if url is not None:
        try:
            Broker.from_url(url)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return url


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")
    ] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes sharing the port (one per core).")
    ] = 1,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            case_sensitive=False,
            help="Least severe messages logged (engine and uvicorn) [default: ENERGY_LOG_LEVEL, "
            "info].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the API (with an embedded PostgreSQL when DATABASE_URL is not set).

    Every route but the health checks and the docs needs an API key (`keys create`). On a
    database without any key, the first start prints an admin key once and writes it to
    ENERGY_DATA_DIR/admin.key (mode 0600). ENERGY_AUTH=off serves without keys, on a loopback
    --host only.

    Timeouts and limits (per process) come from the environment: ENERGY_HTTP_HEADER_TIMEOUT
    (PT10S), ENERGY_HTTP_BODY_TIMEOUT (PT60S), ENERGY_HTTP_KEEP_ALIVE (PT10S),
    ENERGY_HTTP_MAX_CONNECTIONS (1000), ENERGY_HTTP_BACKLOG (2048), ENERGY_SHUTDOWN_TIMEOUT
    (PT30S).

    Logs go to stderr as JSON lines (ENERGY_LOG_FORMAT=plain for a terminal), one line per
    request (ENERGY_REQUEST_LOG); GET /metrics answers Prometheus text for every worker.
    """
    if log_level is not None:  # the workers read it from the environment too
        os.environ["ENERGY_LOG_LEVEL"] = log_level.value
    settings = _settings()
    if not settings.auth and not _loopback(host):
        typer.echo(
            f"error: ENERGY_AUTH=off serves every route without a key; it may only listen on "
            f"loopback (127.0.0.1, ::1, localhost), not {host}",
            err=True,
        )
        raise typer.Exit(2)
    if settings.mqtt_client_id is not None and workers > 1:
        # Two connections with one client id take the broker session from each other.
        typer.echo(
            "error: ENERGY_MQTT_CLIENT_ID names one MQTT session, and every worker would "
            "connect with it; run one process per client id (--workers 1), or leave it unset",
            err=True,
        )
        raise typer.Exit(2)
    logs.configure(settings)
    _check_database(settings)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        "log_config": None,  # uvicorn's lines go through the engine's handler (logs.configure)
        "access_log": False,  # RequestLog writes the engine's line per request instead
        **server.uvicorn_options(settings),
    }
    # uvicorn drains and shuts down on SIGTERM, then re-raises the signal with the handler
    # that was there before; make that handler report the graceful stop as success.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The embedded PostgreSQL (if any) starts once, here, and the schema is checked and
    # migrated before any worker starts, so that a problem is one line, not a worker's
    # traceback. With several processes every worker builds its app from the environment
    # pointing at it; on SIGTERM the supervisor stops each, and each drains its own queue.
    with db.database_url(settings) as url:
        _prepare(url, settings, first_key=settings.auth)
        if workers == 1:
            uvicorn.run(create_app(settings.model_copy(update={"database_url": url})), **options)
            return
        os.environ["DATABASE_URL"] = url
        # The workers keep their metrics in files there (observability.metrics); it must be
        # in the environment before they start, as prometheus_client reads it on import.
        directory = metrics.fresh_directory(settings.data_dir)
        os.environ[metrics.MULTIPROCESS_ENV] = str(directory)
        try:
            server.run_workers("energy_engine.app:app_from_environment", workers, **options)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def _prepare(url: str, settings: Settings, *, first_key: bool = False) -> dict[str, Any]:
    """Migrate and create partitions, and with `first_key` an admin key if there is no key
    at all; one line and exit status 1 when the database's applied migrations are not the
    ones this build ships."""

    async def run() -> dict[str, Any]:
        pool = await db.create_pool(url, settings.model_copy(update={"pool_min_size": 1}))
        try:
            async with pool.acquire() as conn:
                outcome = await db.prepare(conn, settings)
                if first_key:
                    await _first_admin_key(conn, settings)
                return outcome
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    except db.MigrationMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _first_admin_key(conn: db.Connection, settings: Settings) -> None:
    """On an empty key table: an admin key, printed once and written to the data directory
    (0600) so that the tools on this machine find it."""
    key = api_keys.generate((api_keys.Scope.ADMIN,), name="first admin key")
    if not await key_store.insert_first_key(conn, key):
        return
    path = keyfile.write(settings.data_dir, key.text)
    typer.echo(
        f"Created the first API key (admin, id {key.id}); it is shown once, here, and "
        f"kept in {path} (readable by you only):\n{key.text}"
    )


@cli.command()
def worker() -> None:
    """Write the readings that queue mode put in the JetStream stream into PostgreSQL, until
    stopped (SIGTERM, Ctrl-C).

    Run one or more beside `serve` with ENERGY_INGEST_MODE=queue and the same NATS_URL,
    DATABASE_URL and ENERGY_QUEUE_* settings; they share the stream's durable consumer
    (ENERGY_QUEUE_CONSUMER). Each commits batches of up to ENERGY_QUEUE_BATCH (5000) readings
    on ENERGY_WRITER_CONNECTIONS (2) connections and acknowledges them after the commit; what a
    worker fetched and did not acknowledge is delivered again after ENERGY_QUEUE_ACK_WAIT
    (PT30S). While the database is down the readings wait in the stream.
    """
    settings = _settings()
    logs.configure(settings)
    _check_database(settings)

    async def run(url: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for stop in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await queue_worker.run(settings, url)

    with db.database_url(settings) as url:
        try:
            asyncio.run(run(url))
        except (OSError, nats.errors.Error) as exc:
            typer.echo(f"error: NATS: {type(exc).__name__}: {exc}; check NATS_URL", err=True)
            raise typer.Exit(1) from None


@cli.command()
def migrate() -> None:
    """Apply pending migrations and create the history partitions, then exit.

    Daily partitions cover the oldest day a reading may have (ENERGY_MAX_READING_AGE, P30D)
    through ENERGY_PARTITION_DAYS_AHEAD (3) days ahead; `serve` keeps them ahead hourly.
    """
    settings = _settings()
    _check_database(settings)
    with db.database_url(settings) as url:
        outcome = _prepare(url, settings)
    typer.echo(f"migrations applied: {outcome['applied'] or 'none pending'}")
    typer.echo(f"partitions created: {outcome['partitions_created']}")


@cli.command()
def retention(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go, change nothing.")
    ] = False,
) -> None:
    """Run one maintenance round now: partitions ahead and retention; or, with --dry-run, list
    the history partitions and rollups it would remove and the bytes that frees.

    History is kept for ENERGY_HISTORY_RETENTION (unset: forever); day partitions wholly older
    are dropped. Rollups are kept for ENERGY_ROLLUP_RETENTION (unset: forever). `serve` runs
    the same round every ENERGY_PARTITION_UPKEEP_EVERY, one process at a time.
    """
    settings = _settings()
    _check_database(settings)
    now = datetime.now(UTC)

    async def run(url: str) -> maintenance.Plan | maintenance.Round | None:
        pool = await db.create_pool(url, settings.model_copy(update={"pool_min_size": 1}))
        try:
            if dry_run:  # reads the catalog and the rollup tables, migrates nothing
                async with pool.acquire() as conn:
                    try:
                        return await maintenance.plan(conn, settings, now)
                    except asyncpg.UndefinedTableError:
                        typer.echo(
                            "error: the database has no schema yet: nothing to drop", err=True
                        )
                        raise typer.Exit(1) from None
            return await maintenance.maintain(pool, settings, now)
        finally:
            await pool.close()

    with db.database_url(settings) as url:
        if not dry_run:
            _prepare(url, settings)  # the round records itself in a table a migration makes
        outcome = asyncio.run(run(url))
    if outcome is None:
        typer.echo("error: another process is running a maintenance round; try again", err=True)
        raise typer.Exit(1)
    _report_retention(settings, outcome)


def _report_retention(settings: Settings, outcome: maintenance.Plan | maintenance.Round) -> None:
    """A dry run's plan or a round's outcome, one line per partition and a total."""
    if settings.history_retention is None:
        typer.echo("history retention: not set (ENERGY_HISTORY_RETENTION): history is kept")
    else:
        typer.echo(
            f"history retention: {duration_text(settings.history_retention)}: day partitions "
            f"wholly before {outcome.history_cutoff:%Y-%m-%dT%H:%M:%SZ} go"
        )
    dry = isinstance(outcome, maintenance.Plan)
    partitions = outcome.partitions if isinstance(outcome, maintenance.Plan) else outcome.dropped
    for p in partitions:
        rows = "?" if p.rows_estimate is None else f"{p.rows_estimate:,}"
        typer.echo(
            f"  {p.name}  {p.range_from:%Y-%m-%dT%H:%MZ} .. {p.range_to:%Y-%m-%dT%H:%MZ}  "
            f"~{rows} rows  {p.bytes:,} bytes"
        )
    verb = "would drop" if dry else "dropped"
    freed = outcome.bytes if isinstance(outcome, maintenance.Plan) else outcome.bytes_freed
    typer.echo(f"{verb} {len(partitions)} partitions, {freed:,} bytes ({freed / 2**20:.1f} MiB)")
    if isinstance(outcome, maintenance.Round) and outcome.postponed:
        typer.echo(f"postponed (table locked, next round): {', '.join(outcome.postponed)}")
    if settings.rollup_retention is None:
        typer.echo("rollup retention: not set (ENERGY_ROLLUP_RETENTION): rollups are kept")
    elif isinstance(outcome, maintenance.Plan):
        counts = ", ".join(f"{table} {n:,}" for table, n in outcome.rollups.items())
        typer.echo(
            f"rollups wholly before {outcome.rollup_cutoff:%Y-%m-%dT%H:%M:%SZ} would be "
            f"deleted: {counts}"
        )
    else:
        typer.echo(f"rollups deleted: {outcome.rollups_deleted:,}")


@cli.command("import")
def import_(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE...",
            help="*.ndjson / *.jsonl (meters and vehicles mixed) or *.csv (one stream), "
            "each optionally .gz; or an NDJSON file of assignments.",
        ),
    ],
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Readings validated, copied and committed together.")
    ] = 250_000,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Import readings and assignments from files; importing a file again stores nothing twice.

    Rows are validated as the API validates them; an invalid row stops the import (exit
    status 2) before anything of its chunk is stored.

    A file of assignments is NDJSON with one POST /v1/assignments body a line, e.g.
    {"vehicleId": "V-1", "meterId": "M-1", "validFrom": "2026-01-01T10:00:00Z"}
    (`simulate --out FILE` writes one as FILE.assignments.ndjson). It is told apart by its
    first row naming both a vehicleId and a meterId; it is checked whole, then applied row by
    row in file order, after the readings; a row overlapping a stored assignment stops it.
    """
    from pathlib import Path

    from energy_engine.importer import run

    paths = [Path(file) for file in files]
    settings = _settings()
    _check_database(settings)
    raise typer.Exit(run.run(paths, settings, chunk_rows=chunk_rows, quiet=quiet))


@cli.command()
def simulate(
    meters: Annotated[int, typer.Option(min=0, help="Chargers, each behind a smart meter.")] = 10,
    vehicles: Annotated[int, typer.Option(min=0, help="Electric vehicles.")] = 10,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Readings per second, all devices together: simulated time runs at "
            "RATE x 60 / (meters + vehicles) times real time. Replays the --backfill history "
            "(1 day unless given) at that pace, then goes on live.",
        ),
    ] = None,
    speedup: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Simulated minutes per real minute; like --rate, replays the --backfill "
            "history (1 day unless given), then goes on live.",
        ),
    ] = None,
    backfill: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=30,
            metavar="DAYS",
            help="Start DAYS in the past. Alone: send that history as fast as possible, then exit.",
        ),
    ] = None,
    url: Annotated[
        str, typer.Option(callback=_http_url, help="The engine's base URL (http or https).")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ENERGY_API_KEY",
            show_envvar=True,
            help="The API key to send (it needs the ingest and admin scopes: simulate "
            "assigns vehicles to meters). Default: the key in ENERGY_DATA_DIR/admin.key "
            "(.energy-engine/admin.key), which the first `serve` writes.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same fleet, same readings.")] = 0,
    faulty_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of chargers near 0.70 efficiency.")
    ] = 0.05,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Readings a request.")] = 1000,
    concurrency: Annotated[int, typer.Option(min=1, max=1000, help="Requests in flight.")] = 4,
    mqtt: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            callback=_mqtt_url,
            help="Publish the readings to this MQTT broker (mqtt://user:password@host:port or "
            "mqtts://, with ENERGY_MQTT_CA_FILE and friends), one QoS 1 message a reading on "
            "its device's topic under ENERGY_MQTT_TOPIC_PREFIX (energy); assignments still go "
            "to --url.",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Write the --backfill readings to this NDJSON file (gzip if it ends in .gz) "
            "and the plug-ins to NAME.assignments.ndjson beside it, instead of sending.",
        ),
    ] = None,
) -> None:
    """Simulate a fleet: vehicles drive, plug in and charge; meters and vehicles report.

    Each device reports once a simulated minute; a vehicle plugging in gets assigned.

    Without --rate, --speedup or --backfill the fleet runs in real time until Ctrl-C.
    """
    from pathlib import Path

    from energy_engine.simulate.fleet import FleetConfig
    from energy_engine.simulate.run import run as run_simulation

    if rate is not None and speedup is not None:
        raise typer.BadParameter("give --rate or --speedup, not both")
    if out is not None and (backfill is None or rate is not None or speedup is not None):
        raise typer.BadParameter("--out writes a --backfill; it takes no --rate or --speedup")
    if out is not None and mqtt is not None:
        raise typer.BadParameter("--out writes files; it takes no --mqtt")
    config = FleetConfig(meters=meters, vehicles=vehicles, seed=seed, faulty_share=faulty_share)
    stats = run_simulation(
        config,
        url=url,
        api_key=keyfile.find(api_key, _settings().data_dir) if out is None else None,
        rate=rate,
        speedup=speedup,
        backfill_days=backfill,
        batch_size=batch_size,
        concurrency=concurrency,
        out=None if out is None else Path(out),
        mqtt=None if mqtt is None else (mqtt, _settings()),
    )
    if stats.first_error:
        raise typer.Exit(1)


T = TypeVar("T")


def _with_connection(settings: Settings, work: Callable[[db.Connection], Awaitable[T]]) -> T:
    """Run `work(conn)` on the configured database (the embedded one, shared with a `serve`
    running on it, when DATABASE_URL is unset), migrated first if it is not yet."""
    _check_database(settings)

    async def run(url: str) -> T:
        conn = await asyncpg.connect(
            url,
            timeout=settings.connect_timeout.total_seconds(),
            server_settings={"timezone": "UTC"},
        )
        try:
            if await db.pending_migrations(conn):
                await db.prepare(conn, settings)
            return await work(conn)
        finally:
            await conn.close()

    with db.database_url(settings) as url:
        try:
            return asyncio.run(run(url))
        except db.MigrationMismatch as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


@keys_cli.command("create")
def keys_create(
    scope: Annotated[
        list[api_keys.Scope] | None,
        typer.Option(
            "--scope",
            case_sensitive=False,
            help="What the key may do (repeat for several): ingest, read, metrics or admin "
            "(everything). Default: ingest.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            metavar="ID",
            help="Bind the key to one device: it may write that device's readings only.",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="A note saying whose or what the key is.")] = "",
) -> None:
    """Create an API key and print it; it is shown this once and stored only as a hash."""
    from energy_engine.bounds import DEVICE_ID_PATTERN

    scopes = tuple(dict.fromkeys(scope or [api_keys.Scope.INGEST]))
    if device is not None:
        if scopes != (api_keys.Scope.INGEST,):
            raise typer.BadParameter(
                "a device-bound key has the ingest scope only", param_hint="--device"
            )
        if not re.fullmatch(DEVICE_ID_PATTERN, device):
            raise typer.BadParameter("not a device id", param_hint="--device")
    key = api_keys.generate(scopes, name=name, device_id=device)
    _with_connection(_settings(), lambda conn: key_store.insert_key(conn, key))
    typer.echo(key.text)
    bound = f", device {device}" if device else ""
    typer.echo(
        f"key {key.id} ({', '.join(scopes)}{bound}) created; it is not shown again", err=True
    )


@keys_cli.command("list")
def keys_list() -> None:
    """List every key: id, scopes, device, name, created and revoked (never the key)."""
    found = _with_connection(_settings(), key_store.list_keys)
    typer.echo(
        f"{'ID':<12}  {'SCOPES':<20}  {'DEVICE':<16}  {'CREATED':<20}  {'REVOKED':<20}  NAME"
    )
    for key in found:
        revoked = f"{key.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if key.revoked_at else "-"
        typer.echo(
            f"{key.id:<12}  {','.join(key.scopes):<20}  {key.device_id or '-':<16}  "
            f"{key.created_at:%Y-%m-%dT%H:%M:%SZ}  {revoked:<20}  {key.name}"
        )


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from `keys list`).")],
) -> None:
    """Revoke a key; every server refuses it within ENERGY_AUTH_REFRESH_EVERY (PT2S)."""
    key_id = api_keys.key_id(key_id) or key_id  # the whole key names its id too
    revoked = _with_connection(_settings(), lambda conn: key_store.revoke_key(conn, key_id))
    if revoked is None:
        typer.echo(f"error: no key with id {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {key_id} revoked (at {revoked:%Y-%m-%dT%H:%M:%SZ})")


def main() -> None:
    """Console-script entry point."""
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    cli()


if __name__ == "__main__":
    main()

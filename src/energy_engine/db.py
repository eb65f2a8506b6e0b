"""PostgreSQL plumbing: the embedded server, the pool, migrations and history partitions."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from energy_engine.errors import outage
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # asyncpg's classes are generic only in its stubs
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    )
else:
    Pool = asyncpg.Pool
    Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def as_sent(value: float) -> float:
    """A sensor value as sent: history stores these as `real` (migration 0002) and hands the
    hot row the stored value, so 230.9 comes back as 230.89999389648438. Seven significant
    digits is what a `real` holds and far more than the sensors resolve."""
    return float(f"{value:.7g}")


# Arbitrary but fixed key: every engine process migrates under this one advisory lock.
MIGRATION_LOCK_KEY = 0x656E6572677931


# The embedded server is the engine's own, so the engine sizes it for sustained ingest: with
# the default 1 GB of WAL between checkpoints PostgreSQL checkpoints every minute or two under
# load, and the first change of every page after a checkpoint writes the whole 8 kB page to
# WAL. Both settings take effect on reload; durability is unchanged (synchronous_commit on).
EMBEDDED_TUNING = """
ALTER SYSTEM SET max_wal_size = '8GB';
ALTER SYSTEM SET checkpoint_timeout = '15min';
SELECT pg_reload_conf();
"""


@contextmanager
def embedded_postgres(data_dir: Path, *, cleanup: bool = False) -> Iterator[str]:
    """Run the PostgreSQL shipped in the `pgserver` wheel on `data_dir`; yields its URL."""
    from pgserver import get_server  # type: ignore[attr-defined]  # not re-exported in its stubs

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if cleanup else "stop")
    try:
        server.psql(EMBEDDED_TUNING)
        yield server.get_uri()
    finally:
        server.cleanup()


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured DATABASE_URL, or an embedded server's for as long as the context lasts."""
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_postgres(settings.data_dir / "pgdata") as url:
        log.info("embedded PostgreSQL running in %s", settings.data_dir / "pgdata")
        yield url


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (works for unix-socket URLs with ?host= too)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def run_statements(url: str, *statements: str) -> None:
    """Run administrative statements (CREATE/DROP DATABASE …) on their own connection."""
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _keep_session(conn: Connection) -> None:
    """What the pools do to a connection handed back, besides rolling back an open transaction
    (asyncpg always does that): nothing. asyncpg's default sends `pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL` on every release, a round trip per request: py-spy put 15 %
    of the engine's time under analytics load there. The engine leaves no session state behind:
    settings are `SET LOCAL` or given at connect, advisory locks are transaction-scoped (the
    migration and maintenance locks are released in a `finally`), and nothing listens or keeps a
    cursor."""


# --- Bounded database work (hardening) -------------------------------------------------------

if TYPE_CHECKING:
    _PoolBase: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    _PoolBase = asyncpg.Pool


class _BoundedPool(_PoolBase):
    """asyncpg's pool, with a default for how long `acquire()` waits for a connection: when the
    database hangs, every request waiting for a pooled connection gives up in time (a
    TimeoutError, answered 503) instead of queueing forever behind the hung ones."""

    acquire_timeout: float | None = None

    def acquire(self, *, timeout: float | None = None) -> Any:
        """A pooled connection, waiting at most `timeout` (default: the pool's)."""
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


class _OneLineOutages(logging.Filter):
    """asyncpg's pool retries its connection floor while the database is down and logs each
    failed try with a traceback; an outage is expected, so the line keeps its reason only."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of an outage from `record` (every record passes)."""
        exc = record.exc_info[1] if record.exc_info else None
        found = outage(exc) if exc is not None else None
        if found is not None:
            record.msg = f"{record.getMessage()}: {found.reason}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_ONE_LINE_OUTAGES = _OneLineOutages()


async def _open_pool(
    url: str, settings: Settings, *, min_size: int, max_size: int, server_settings: dict[str, str]
) -> Pool:
    """A bounded pool: connects within `connect_timeout`, hands out connections within
    `acquire_timeout`, and no command waits on the server longer than `command_timeout`."""
    logging.getLogger("asyncpg.pool").addFilter(_ONE_LINE_OUTAGES)  # once: filters are a set
    pool = _BoundedPool(
        url,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        reset=_keep_session,
        loop=None,
        timeout=settings.connect_timeout.total_seconds(),
        command_timeout=settings.command_timeout.total_seconds(),
        server_settings=server_settings,
    )
    pool.acquire_timeout = settings.acquire_timeout.total_seconds()
    await pool  # opens the first connections
    return pool


async def read_limits(url: str, settings: Settings) -> dict[str, str]:
    """The request pool's per-session limits: `statement_timeout`, and `temp_file_limit` when
    the role may set it. temp_file_limit is superuser-only (or granted with GRANT SET ON
    PARAMETER); asked for in the connection's settings by a role without the right, every
    connection would fail, so it is tried once here and left out, with one warning, if refused.
    """
    limits = {"statement_timeout": str(int(settings.statement_timeout.total_seconds() * 1000))}
    if not settings.temp_file_limit_mb:
        return limits
    wanted = f"{settings.temp_file_limit_mb}MB"
    conn = await asyncpg.connect(url, timeout=settings.connect_timeout.total_seconds())
    try:
        await conn.execute("SELECT set_config('temp_file_limit', $1, false)", wanted)
    except asyncpg.InsufficientPrivilegeError:
        log.warning(
            "temp_file_limit not set: the database role may not set it (a superuser can "
            "GRANT SET ON PARAMETER temp_file_limit); reads' temporary files are unbounded"
        )
        return limits
    finally:
        await conn.close()
    return {**limits, "temp_file_limit": wanted}


async def create_pool(url: str, settings: Settings) -> Pool:
    """Open the request pool; every session works in UTC and reuses its query plans.

    The reads (analytics, status) touch day-partitioned history; planning such a query
    against 30-odd partitions took about 3 ms, longer than running it, and PostgreSQL kept
    choosing custom plans. A generic plan is made once per connection and prunes partitions
    when it starts executing: EXPLAIN ANALYZE of the 24 h vehicle window went from 5.4 to
    2.5 ms. tests/integration/test_query_plans.py checks the generic plans use the indexes.

    Every statement is bounded by PostgreSQL (`read_limits`); the refresher and migrations,
    which run on this pool too, lift the timeout for their own transactions.
    """
    return await _open_pool(
        url,
        settings,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        server_settings={
            "timezone": "UTC",
            "application_name": "energy-engine",
            "plan_cache_mode": "force_generic_plan",
            # The analytics statements have hundreds of expressions and high cost estimates
            # (nested loops over partitions), so PostgreSQL JIT-compiled them: 693 of the
            # 698 ms of a 24-step series, 235 ms of the fleet statement. They run in
            # milliseconds without it.
            "jit": "off",
            **await read_limits(url, settings),
        },
    )


async def create_writer_pool(url: str, settings: Settings) -> Pool:
    """The group-commit writers' own connections, planned afresh for every batch.

    The write statements unnest arrays whose length only the bound parameters tell. After five
    executions PostgreSQL switches a prepared statement to a generic plan that assumes 100
    rows. For a 10,000-row batch that plan picks a nested-loop join and the statement runs
    about 30 times slower (EXPLAIN ANALYZE: about 1,500 instead of 50,000 rows/s). A custom
    plan costs about 0.3 ms per flush.
    Keeping the writers off the request pool also means reads can never starve the writes.
    """
    return await _open_pool(
        url,
        settings,
        min_size=settings.writer_connections,
        max_size=settings.writer_connections,
        server_settings={
            "timezone": "UTC",
            "application_name": "energy-engine-writer",
            "plan_cache_mode": "force_custom_plan",
        },
    )


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL file from `energy_engine/migrations`."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """The file's name without `.sql`, e.g. `0001_baseline`."""
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        """SHA-256 of the file: a database records it for every migration it applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationMismatch(Exception):
    """The database's applied migrations are not the files this build ships; the message says
    which one and what to do."""


def load_migrations() -> list[Migration]:
    """All migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("energy_engine.migrations").iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


# Released migrations are immutable: a database records the checksum of each file it applied,
# and the engine refuses to run against one whose record differs from the files it ships,
# rather than run on a schema it does not know (an edited migration never re-runs).
CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED_MIGRATIONS = "SELECT version, name, checksum, applied_at FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


async def _applied(conn: Connection) -> dict[int, asyncpg.Record]:
    """The migrations recorded in the database, by version (none before the first)."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {}
    try:
        rows = await conn.fetch(APPLIED_MIGRATIONS)
    except asyncpg.UndefinedColumnError:
        raise MigrationMismatch(
            "the database was migrated by a pre-release build that kept no migration "
            "checksums; its schema cannot be verified: recreate the database"
        ) from None
    return {row["version"]: row for row in rows}


def verify_applied(applied: dict[int, asyncpg.Record], shipped: list[Migration]) -> None:
    """MigrationMismatch unless every applied migration is shipped, byte for byte."""
    by_version = {m.version: m for m in shipped}
    for version, row in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationMismatch(
                f"the database has migration {version:04d}_{row['name']}, which this build does "
                "not ship: it was migrated by another build of the engine; run that build or "
                "use a new database"
            )
        if row["checksum"] != migration.checksum:
            raise MigrationMismatch(
                f"migrations/{migration.label}.sql differs from the migration this database "
                f"applied on {row['applied_at']:%Y-%m-%d} (checksum {row['checksum'][:12]}, "
                f"shipped {migration.checksum[:12]}): a released migration must not change; "
                "restore it and put the change in a new migration file"
            )


async def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations after checking the applied ones against the shipped files;
    safe with concurrent starters; returns those applied."""
    applied_now: list[str] = []
    shipped = load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        applied = await _applied(conn)
        verify_applied(applied, shipped)
        await conn.execute(CREATE_SCHEMA_MIGRATIONS)
        for migration in shipped:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    RECORD_MIGRATION, migration.version, migration.name, migration.checksum
                )
            applied_now.append(migration.label)
            log.info("applied migration %s", migration.label)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def pending_migrations(conn: Connection) -> int:
    """How many shipped migrations the database lacks (all of them when none ran yet);
    MigrationMismatch when what it applied is not what this build ships."""
    shipped = load_migrations()
    applied = await _applied(conn)
    verify_applied(applied, shipped)
    return len({m.version for m in shipped} - applied.keys())


async def ensure_partitions(conn: Connection, first_day: date, last_day: date) -> int:
    """Create the missing daily history partitions for [first_day, last_day]."""
    created: int = await conn.fetchval(
        "SELECT ensure_reading_partitions($1, $2)", first_day, last_day
    )
    return created


async def ensure_partitions_ahead(conn: Connection, settings: Settings) -> int:
    """Partitions for every day a valid reading can fall on now, plus the days just ahead."""
    today = datetime.now(UTC).date()
    oldest = (datetime.now(UTC) - settings.max_reading_age).date()
    return await ensure_partitions(
        conn, oldest, today + timedelta(days=settings.partition_days_ahead)
    )


def days_spanned(timestamps: list[datetime]) -> tuple[date, date]:
    """First and last UTC day of a non-empty list of aware timestamps."""
    return (
        min(timestamps).astimezone(UTC).date(),
        max(timestamps).astimezone(UTC).date(),
    )


# The engine's own upkeep (migrations, the rollup refresher) is not bounded by the limits the
# request pool puts on clients' reads: a migration building an index or a refresher catching up
# on a backlog sorts far more than a read may. temp_file_limit may only be changed by a role
# allowed to set it; a role that may not never had it set by the pool, so its refusal is moot.
UNBOUNDED_TRANSACTION = """
SET LOCAL statement_timeout = 0;
DO $$ BEGIN PERFORM set_config('temp_file_limit', '-1', true);
EXCEPTION WHEN insufficient_privilege THEN NULL; END $$
"""
_UNBOUNDED_SESSION = """
SET statement_timeout = 0;
DO $$ BEGIN PERFORM set_config('temp_file_limit', '-1', false);
EXCEPTION WHEN insufficient_privilege THEN NULL; END $$
"""
# Back to the values the connection was opened with.
_BOUNDED_SESSION = """
RESET statement_timeout;
DO $$ BEGIN RESET temp_file_limit;
EXCEPTION WHEN insufficient_privilege THEN NULL; END $$
"""


@asynccontextmanager
async def unbounded_session(conn: Connection) -> AsyncIterator[None]:
    """The session's statement_timeout and temp_file_limit lifted for the block (upkeep that
    runs outside a transaction), then back to the connection's values."""
    await conn.execute(_UNBOUNDED_SESSION)
    try:
        yield
    finally:
        await conn.execute(_BOUNDED_SESSION)


async def prepare(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Migrate and create partitions; what start-up and `energy-engine migrate` both do."""
    async with unbounded_session(conn):
        applied = await migrate(conn)
        created = await ensure_partitions_ahead(conn, settings)
    return {"applied": applied, "partitions_created": created}


# --- Reachability: one clear line instead of a driver traceback (the CLI's commands) ---

CONNECT_TIMEOUT_S = 5.0


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be used at the configured URL; the message says what to check."""


def _where(url: str) -> str:
    """host:port (or the socket directory) of a URL, without its credentials."""
    parts = urlsplit(url)
    query = dict(pair.partition("=")[::2] for pair in parts.query.split("&") if pair)
    host = query.get("host") or parts.hostname or "localhost"
    try:
        port = parts.port or query.get("port") or 5432
    except ValueError:  # a port that is no number: the DSN check below words it
        port = "?"
    return f"{host}:{port}"


async def check_reachable(url: str) -> None:
    """Connect once and log in; DatabaseUnavailable with a one-line reason if that fails."""
    where = _where(url)
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (asyncpg.InterfaceError, ValueError) as exc:  # the URL itself is malformed
        raise DatabaseUnavailable(f"DATABASE_URL is not a PostgreSQL URL ({exc})") from None
    except ConnectionRefusedError:
        reason = f"cannot reach PostgreSQL at {where} (connection refused)"
        raise DatabaseUnavailable(reason) from None
    except TimeoutError:
        reason = f"cannot reach PostgreSQL at {where} (no answer in {CONNECT_TIMEOUT_S:g} s)"
        raise DatabaseUnavailable(reason) from None
    except OSError as exc:  # host not found, network unreachable, no such socket file …
        reason = f"cannot reach PostgreSQL at {where} ({exc.strerror or exc})"
        raise DatabaseUnavailable(reason) from None
    except asyncpg.PostgresError as exc:  # a wrong password, user or database name
        raise DatabaseUnavailable(f"PostgreSQL at {where} refused the login ({exc})") from None
    await conn.close()

"""Shared fixtures: a real PostgreSQL, a migrated template database, one fresh database a test.

PostgreSQL is the embedded one (pgserver) unless TEST_DATABASE_URL names another server.
Every test that touches the database gets its own database cloned from the template, so tests
never see each other's rows. A clone costs PostgreSQL 0.15-0.2 s of CPU (0.3-0.6 s of wall
time on a busy machine; the template holds some 600 relations, a partition per history table
and day with its indexes; an empty database clones in 0.04 s) and a drop about 0.02 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from energy_engine import db
from energy_engine.app import create_app
from energy_engine.auth import keys, store
from energy_engine.settings import Settings
from tests import readings

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # keeps platformdirs (pgserver) quiet

# An admin key in the template database, so in every test database: the `client` fixtures
# send it, and so may any test that starts `serve` on a test database (`AUTH`).
ADMIN_KEY = keys.generate((keys.Scope.ADMIN,), name="tests")
AUTH = {"Authorization": f"Bearer {ADMIN_KEY.text}"}


with_database = db.with_database
admin = db.run_statements


@contextlib.contextmanager
def cloned_database(postgres_url: str, template: str, prefix: str) -> Iterator[str]:
    """A database cloned from `template` for a synchronous scope (a module fixture)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template}"))
    try:
        yield with_database(postgres_url, name)
    finally:
        asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


RulesDatabase = Callable[[Settings], str]


@pytest.fixture(scope="module")
def rules_database(
    request: pytest.FixtureRequest, postgres_url: str, template_database: str
) -> Iterator[RulesDatabase]:
    """The module's database for a set of energy rules, cloned on first use: rollups are
    computed for one set, and other rules would drop them (rollups.match_rules)."""
    made: dict[str, str] = {}
    prefix = request.module.__name__.rsplit(".", 1)[-1]

    def database(config: Settings) -> str:
        name = f"{prefix}_{config.energy_semantics.value}_{int(config.max_power_kw)}"
        if name not in made:
            asyncio.run(admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_database}"))
            made[name] = with_database(postgres_url, name)
        return made[name]

    yield database
    for name in made:
        asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An administrative URL of the PostgreSQL server the tests run against."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    with db.embedded_postgres(tmp_path_factory.mktemp("pgdata"), cleanup=True) as url:
        # A throwaway server: nothing in it must survive a crash of the machine, so it does not
        # wait for the disk. Cloning a test's database from the template is mostly fsync
        # otherwise. Nothing the tests check depends on it (commits are still atomic).
        asyncio.run(admin(url, *NO_FSYNC))
        yield url


NO_FSYNC = (
    "ALTER SYSTEM SET fsync = off",
    "ALTER SYSTEM SET synchronous_commit = off",
    "ALTER SYSTEM SET full_page_writes = off",
    "SELECT pg_reload_conf()",
)


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    """A migrated database with partitions, cloned by `database_url`."""
    name = f"energy_template_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        await admin(postgres_url, f"CREATE DATABASE {name}")
        conn = await asyncpg.connect(with_database(postgres_url, name))
        try:
            await db.prepare(conn, Settings(_env_file=None))
            await store.insert_key(conn, ADMIN_KEY)
        finally:
            await conn.close()

    asyncio.run(build())
    yield name
    asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def database_url(postgres_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"energy_test_{uuid.uuid4().hex[:12]}"
    await admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield with_database(postgres_url, name)
    await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for arranging and checking rows."""
    connection = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    yield connection
    await connection.close()


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> MakeSettings:
    """Settings for the test database, with any field overridden."""

    def make(**overrides: Any) -> Settings:
        fields = {"database_url": database_url, "data_dir": tmp_path, **overrides}
        return Settings(_env_file=None, **fields)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    """Default settings on the test database."""
    return make_settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The engine with its lifespan running (pool open, migrations checked)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process, with the tests' admin key."""
    async with app_client(app) as http:
        yield http


def app_client(app: FastAPI, headers: dict[str, str] | None = AUTH) -> httpx.AsyncClient:
    """A client of `app` in-process, sending `headers` (the tests' admin key by default)."""
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://engine", headers=headers)


ClientWith = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client_with(make_settings: MakeSettings) -> ClientWith:
    """Opens a client on an app built with overridden settings (with the tests' admin key)."""

    @contextlib.asynccontextmanager
    async def open_client(**overrides: object) -> AsyncIterator[httpx.AsyncClient]:
        application = create_app(make_settings(**overrides))
        async with application.router.lifespan_context(application):
            async with app_client(application) as http:
                yield http

    return open_client


@pytest.fixture(autouse=True)
def _one_minute() -> Iterator[None]:
    """`minute_ago` gives the same minute throughout the test, whenever the clock turns."""
    with readings.one_minute():
        yield


@dataclass
class PrivatePostgres:
    """A PostgreSQL server the test may stop and start again on the same socket."""

    server: Any
    url: str

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        """Stop it as an operator would: sessions end with AdminShutdown."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start it again, listening where it did (pgserver puts the socket in pgdata)."""
        socket_dir = self.server.pgdata
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.server.log), "start"
        )


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, which it may stop and start (outage tests)."""
    from pgserver import get_server  # type: ignore[attr-defined]

    server = get_server(tmp_path / "pg", cleanup_mode="delete")
    postgres = PrivatePostgres(server, server.get_uri())
    try:
        yield postgres
    finally:
        # pgserver stops only a server it sees running; start it again if a test left it down.
        if not (Path(server.pgdata) / "postmaster.pid").exists():
            postgres.start()
        server.cleanup()

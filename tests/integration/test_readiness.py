"""`/health/ready` when PostgreSQL cannot be reached or answers with an error: 503 and why,
and ready again once the database is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from energy_engine.app import create_app
from tests.conftest import AUTH, MakeSettings


class Proxy:
    """A TCP port in front of the test's PostgreSQL that the test can cut and restore, as a
    network or a server going away would."""

    def __init__(self, postgres_url: str) -> None:
        parts = urlsplit(postgres_url)
        self._socket_dir = parse_qs(parts.query).get("host", [""])[0]  # pgserver: a unix socket
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 5432
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def open(self) -> None:
        """Listen (on the same port as before, after a `cut`) and pass connections through."""
        self._server = await asyncio.start_server(self._pass, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and close every connection passed through."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _pass(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._socket_dir:
            path = f"{self._socket_dir}/.s.PGSQL.{self._port}"
            server_r, server_w = await asyncio.open_unix_connection(path)
        else:
            server_r, server_w = await asyncio.open_connection(self._host, self._port)
        self._writers |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        self._writers -= {client_w, server_w}


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[Proxy]:
    through = Proxy(postgres_url)
    await through.open()
    yield through
    if through._server is not None and through._server.is_serving():
        await through.cut()


async def _ready_until(http: httpx.AsyncClient, status: int) -> httpx.Response:
    deadline = time.monotonic() + 10
    while (response := await http.get("/health/ready")).status_code != status:
        assert time.monotonic() < deadline, (status, response.json())
        await asyncio.sleep(0.05)
    return response


async def test_not_ready_while_the_database_is_unreachable_and_ready_again_after(
    make_settings: MakeSettings, database_url: str, proxy: Proxy
) -> None:
    user = urlsplit(database_url).username or "postgres"
    name = urlsplit(database_url).path
    via_proxy = f"postgresql://{user}@127.0.0.1:{proxy.port}{name}"
    app = create_app(make_settings(database_url=via_proxy))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://engine", headers=AUTH
        ) as http:
            assert (await http.get("/health/ready")).status_code == 200
            await proxy.cut()
            down = await http.get("/health/ready")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/json"
            reason = down.json()["status"]
            assert reason.startswith("database unreachable: "), reason
            assert (await http.get("/health/live")).json() == {"status": "ok"}
            await proxy.open()
            ready = await _ready_until(http, 200)
            assert ready.json() == {"status": "ok", "rollupQuarantinedHours": 0}


async def test_not_ready_when_the_database_answers_with_an_error(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    # Not an outage but a database the engine cannot use (a table readiness reads is gone):
    # not ready, and the error says why.
    await conn.execute("ALTER TABLE rollup_quarantine RENAME TO moved_away")
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": 'database error: UndefinedTableError: relation "rollup_quarantine" does not exist'
    }

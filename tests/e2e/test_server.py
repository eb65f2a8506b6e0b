"""A real `energy-engine serve` process against slow clients and a SIGTERM under load."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import AUTH
from tests.e2e.test_serve import serve
from tests.readings import meter, minute_ago

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 200
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


GIVE_UP_S = 5.0  # a connection still open after this counts as held by the server


async def _until(check: Callable[[], bool], what: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.01)


async def _answer_until(base: str, status: int, within_s: float = 10) -> httpx.Response:
    """GET /health/live, each time on a new connection, until it is answered `status`."""
    deadline = time.monotonic() + within_s
    while True:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            response = await http.get("/health/live")
        if response.status_code == status:
            return response
        assert time.monotonic() < deadline, f"never answered {status} within {within_s} s"
        await asyncio.sleep(0.02)


async def _held_open(
    base: str, head: bytes, trickle: bytes, connected: list[None]
) -> tuple[float, bytes]:
    """Open a connection (appending to `connected` once it is), send `head`, then one byte of
    `trickle` (repeated) every 0.1 s; the seconds until the server closes the connection
    (GIVE_UP_S when it has not by then) and what it answered."""
    address = urlsplit(base)
    opened = time.monotonic()  # before connecting: the server's clock starts after this
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    connected.append(None)
    try:
        writer.write(head)
        for byte in trickle * 100:
            if time.monotonic() - opened >= GIVE_UP_S:
                break
            await writer.drain()
            try:  # a read returns at once when the server closes (or answers 408 and closes)
                answer = await asyncio.wait_for(reader.read(), timeout=0.1)
                return time.monotonic() - opened, answer
            except TimeoutError:
                writer.write(bytes([byte]))
        return GIVE_UP_S, b""
    except ConnectionError:
        return time.monotonic() - opened, b""
    finally:
        writer.close()


@pytest.mark.slow
def test_slow_clients_are_cut_off_while_others_are_served(
    database_url: str, tmp_path: Path
) -> None:
    """Slowloris: 200 connections send their request head a byte at a time (and a few send
    a complete head, then their body a byte at a time). Each must be closed by the server
    within the header (body) timeout, and a normal client must be answered promptly
    meanwhile."""
    env = {
        "DATABASE_URL": database_url,
        "ENERGY_HTTP_HEADER_TIMEOUT": f"PT{HEADER_TIMEOUT_S}S",
        "ENERGY_HTTP_BODY_TIMEOUT": f"PT{BODY_TIMEOUT_S}S",
    }
    with serve(env, tmp_path) as (base, _):

        async def run() -> tuple[list[float], list[tuple[float, bytes]], list[tuple[float, bytes]]]:
            connected: list[None] = []
            key = f"Authorization: {AUTH['Authorization']}\r\n".encode()
            head = b"POST /v1/ingest HTTP/1.1\r\nHost: e\r\n" + key
            slow_heads = [
                _held_open(base, head, b"X-Slow: 1\r\n", connected) for _ in range(SLOW_CLIENTS)
            ]
            body_head = (
                b"POST /v1/ingest HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n"
                + key
                + b"Content-Length: 100000\r\n\r\n["
            )
            slow_bodies = [_held_open(base, body_head, b" ", connected) for _ in range(10)]
            slow = asyncio.gather(*slow_heads, *slow_bodies)
            await _until(lambda: len(connected) == SLOW_CLIENTS + 10, "every slow client is in")
            latencies = []
            newest = minute_ago(1)
            async with httpx.AsyncClient(base_url=base, timeout=10, headers=AUTH) as http:
                for minute in range(1, 6):
                    started = time.monotonic()
                    reading = meter("M-normal", newest - timedelta(minutes=minute), minute)
                    response = await http.post("/v1/ingest/meter", json=reading)
                    assert response.json() == {"accepted": 1, "duplicates": 0}
                    latencies.append(time.monotonic() - started)
            closed = await slow
            return latencies, closed[:SLOW_CLIENTS], closed[SLOW_CLIENTS:]

        latencies, head_ends, body_ends = asyncio.run(run())
    assert max(latencies) < 0.5, latencies
    heads, bodies = [at for at, _ in head_ends], [at for at, _ in body_ends]
    answers = {answer.partition(b"\r\n")[0] for _, answer in head_ends + body_ends}
    assert answers == {b"HTTP/1.1 408 Request Timeout"}
    # Closed by the timeout: not before it, and not long after it (the checks are 0.1 s apart).
    assert HEADER_TIMEOUT_S - 0.05 <= min(heads) and max(heads) <= HEADER_TIMEOUT_S + 1.0, heads
    assert BODY_TIMEOUT_S - 0.05 <= min(bodies) and max(bodies) <= BODY_TIMEOUT_S + 1.0, bodies


@dataclass
class _Outcomes:
    """What the load clients saw; see the SIGTERM test's docstring."""

    acked: set[tuple[str, str]] = field(default_factory=set)
    answered: int = 0
    answered_after_signal: int = 0
    refused: int = 0
    resets: list[str] = field(default_factory=list)


async def _load(
    base: str, process_signal: asyncio.Event, clients: int, outcomes: _Outcomes
) -> _Outcomes:
    newest = minute_ago(1)  # fixed, so that the minute turning makes no duplicates

    async def client(number: int) -> None:
        # One keep-alive connection per client, as a device or the simulator holds one.
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=limits, headers=AUTH
        ) as http:
            for minute in range(1, 10_000):
                at = newest - timedelta(minutes=minute)
                batch = [meter(f"M-{number}-{d}", at, minute) for d in range(20)]
                signalled = process_signal.is_set()
                try:
                    response = await http.post("/v1/ingest/meter", content=orjson.dumps(batch))
                except httpx.ConnectError:
                    outcomes.refused += 1  # no server listens any more: a clean refusal
                    return
                except httpx.TransportError as exc:
                    outcomes.resets.append(repr(exc))
                    return
                outcomes.answered += 1
                outcomes.answered_after_signal += signalled
                if response.status_code == 200:
                    assert response.json() == {"accepted": 20, "duplicates": 0}
                    outcomes.acked.update((r["meterId"], r["timestamp"]) for r in batch)
                else:
                    assert response.status_code == 503, response.text

    await asyncio.gather(*(client(n) for n in range(clients)))
    return outcomes


async def _stored(database_url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    try:
        rows = await conn.fetch("SELECT meter_id, read_at FROM meter_readings")
    finally:
        await conn.close()
    return [(r["meter_id"], r["read_at"].isoformat().replace("+00:00", "Z")) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_every_accepted_request(
    database_url: str, tmp_path: Path, workers: int
) -> None:
    """SIGTERM while 16 clients post batches of readings as fast as they are answered.

    Each client holds one keep-alive connection and posts until a request fails. A request
    may end in one of three ways:
    - answered: a complete HTTP response (200, or 503 when the write queue refuses it);
    - refused: `connect()` fails (httpx.ConnectError): the server no longer listens, so the
      request was never sent; a clean refusal the client can retry elsewhere;
    - reset: any other transport error (connection reset or closed, by RST or FIN, while the
      request was being sent or its answer awaited). The request's bytes went to a
      connection the server had accepted, and the server dropped them. There must be none.
    Every reading answered 200 must be stored exactly once, and the server must exit 0.
    """
    with serve({"DATABASE_URL": database_url}, tmp_path, "--workers", str(workers)) as (
        base,
        process,
    ):

        async def run() -> _Outcomes:
            signalled = asyncio.Event()
            outcomes = _Outcomes()
            load = asyncio.ensure_future(_load(base, signalled, 16, outcomes))
            # Under way: every client has been answered a few times.
            await _until(lambda: outcomes.answered >= 16 * 5, "the load is under way")
            signalled.set()
            process.send_signal(signal.SIGTERM)
            return await load

        outcomes = asyncio.run(run())
        assert process.wait(timeout=30) == 0
    assert outcomes.resets == [], outcomes.resets
    assert outcomes.refused == 16  # every client ran until the server stopped listening
    assert outcomes.answered_after_signal >= 16  # requests in flight at the signal were answered
    assert len(outcomes.acked) >= 20 * 16  # every client was answered before it stopped
    stored = asyncio.run(_stored(database_url))
    assert len(stored) == len(set(stored))
    assert outcomes.acked <= set(stored)


def test_past_the_connection_limit_requests_get_the_json_503(
    database_url: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": database_url, "ENERGY_HTTP_MAX_CONNECTIONS": "4"}
    with serve(env, tmp_path) as (base, _):
        address = urlsplit(base)

        async def crowd() -> tuple[httpx.Response, httpx.Response]:
            idle = [await asyncio.open_connection(address.hostname, address.port) for _ in range(4)]
            # Once the server has accepted the four idle connections, a fifth gets the 503.
            refused = await _answer_until(base, 503)
            for _, writer in idle:
                writer.close()
                await writer.wait_closed()
            served = await _answer_until(base, 200)  # once the server has seen them close
            return refused, served

        refused, served = asyncio.run(crowd())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "too_many_connections"
    assert set(refused.json()) == {"error", "message", "errors"}
    assert served.status_code == 200

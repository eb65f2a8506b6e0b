"""Oversized bodies against a real `energy-engine serve`: refused with 413 long before they
are read, without the engine's memory growing with them, while other clients are served."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, cloned_database
from tests.e2e.test_serve import serve
from tests.readings import minute_ago, vehicle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHUNK = b" " * 65536
CLAIMED = 512 * 1024 * 1024  # what each hostile client says it will send


@pytest.fixture(scope="module")
def engine(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    with (
        cloned_database(postgres_url, template_database, "oversized") as url,
        serve({"DATABASE_URL": url}, Path(tmp_path_factory.mktemp("serve"))) as (base, process),
    ):
        yield base, process.pid


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _send_oversized(base: str, path: str, chunked: bool) -> bytes:
    """Send headers announcing (or, chunked, streaming) a 512 MiB body; keep sending until the
    engine answers; return the status line."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {CLAIMED}"
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n{length}\r\n\r\n".encode()
    )
    sent = 0
    answer = asyncio.ensure_future(reader.readline())
    try:
        while not answer.done() and sent < CLAIMED:
            piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)  # drain does not yield while the kernel takes the bytes
            sent += len(CHUNK)
        return await asyncio.wait_for(answer, 10)
    except (ConnectionError, OSError):
        return await asyncio.wait_for(answer, 10)
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
        assert sent < 64 * 1024 * 1024, f"the engine read {sent:,} bytes before answering"


async def test_oversized_bodies_are_413_early_and_others_are_served(
    engine: tuple[str, int],
) -> None:
    base, pid = engine
    before = _rss_mb(pid)
    hostile = [
        _send_oversized(base, path, chunked)
        for path in ("/v1/assignments", "/v1/ingest")
        for chunked in (False, True)
        for _ in range(5)
    ]
    latencies: list[float] = []

    async def normal_client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=AUTH) as http:
            for minute in range(20):
                began = time.monotonic()
                sent = await http.post("/v1/ingest", json=vehicle("V-ok", minute_ago(minute), 1.0))
                assert sent.status_code == 200, sent.text
                status = await http.get("/v1/vehicles/V-ok/status")
                assert status.status_code == 200
                latencies.append(time.monotonic() - began)

    answers, _ = await asyncio.gather(asyncio.gather(*hostile), normal_client())
    assert all(line.startswith(b"HTTP/1.1 413") for line in answers), answers
    assert max(latencies) < 2.0, latencies
    assert _rss_mb(pid) - before < 100, (before, _rss_mb(pid))

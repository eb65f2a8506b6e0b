"""Open-model load: requests start on a fixed schedule, whatever the server's latency.

wrk is a closed model (a connection waits for its answer before the next request), which
hides queueing: a slow server simply gets fewer requests. Here request i is due at
start + i / rate, and its latency counts from that due time (no coordinated omission), so a
server that falls behind shows it in the percentiles. Hand-written because the one maintained
open-model tool (wrk2) is not packaged for Debian.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import orjson

from benchmarks.harness import api_headers


@dataclass(frozen=True, slots=True)
class OpenLoadResult:
    """What an open-model run achieved."""

    due: int  # requests the schedule called for
    acknowledged: int  # answered 2xx
    failed: int  # answered otherwise or not at all
    overloaded: int  # of those, answered 503 (the engine's queue was full)
    errors: dict[str, int]  # every failure by status code or exception
    seconds: float
    p50_ms: float
    p99_ms: float
    readings_per_request: int

    @property
    def readings_per_second(self) -> float:
        """Acknowledged readings per second of the schedule."""
        return self.acknowledged * self.readings_per_request / self.seconds


KEEP_ALIVE_S = 4.0


def _gateway_batch(prefix: str, gateway: int, round_: int, size: int, start: datetime) -> bytes:
    """A gateway's batch: `size` devices (half meters, half vehicles), one new minute each."""
    at = (start + timedelta(minutes=round_)).isoformat().replace("+00:00", "Z")
    items: list[dict[str, object]] = []
    for slot in range(size):
        device = f"{prefix}-g{gateway}-{slot}"
        if slot % 2:
            items.append(
                {
                    "meterId": device,
                    "kwhConsumedAc": round_ * 0.17,
                    "voltage": 230.0,
                    "timestamp": at,
                }
            )
        else:
            items.append(
                {
                    "vehicleId": device,
                    "soc": 20 + round_ % 80,
                    "kwhDeliveredDc": round_ * 0.15,
                    "batteryTemp": 25.0,
                    "timestamp": at,
                }
            )
    return orjson.dumps(items)


async def open_load(
    base_url: str,
    *,
    requests_per_second: float,
    readings_per_request: int,
    seconds: float,
    prefix: str,
    gateways: int = 4000,
) -> OpenLoadResult:
    """Send `readings_per_request`-reading batches to POST /v1/ingest at a fixed rate."""
    # Live traffic: from the top of the current hour, a minute per round (see single.lua);
    # enough gateways that 60 s at the target rate takes 5 rounds, never ahead of the clock
    # by more than the 5 minutes the API allows.
    start_at = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    total = int(requests_per_second * seconds)
    latencies: list[float] = []
    failures = overloaded = 0
    errors: dict[str, int] = {}  # failure kinds: a status code or an exception's name
    idle: list[tuple[float, _Connection]] = []  # (when it was last used, connection)
    opened: list[_Connection] = []
    target = urlsplit(base_url)
    host, port = target.hostname or "127.0.0.1", target.port or 80

    async def one(due: float, body: bytes) -> None:
        nonlocal failures, overloaded
        # uvicorn closes a keep-alive connection after 5 s idle; one left on the stack that
        # long is closed here rather than failing the next request sent on it.
        while idle and time.perf_counter() - idle[-1][0] > KEEP_ALIVE_S:
            idle.pop()[1].close()
        try:
            if idle:
                connection = idle.pop()[1]
            else:
                connection = await _Connection.open(host, port)
                opened.append(connection)
            status = await connection.post("/v1/ingest", body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        idle.append((time.perf_counter(), connection))
        if status == 200:
            latencies.append(time.perf_counter() - due)
        else:
            failures += 1
            overloaded += status == 503
            errors[str(status)] = errors.get(str(status), 0) + 1

    tasks = []
    began = time.perf_counter()
    try:
        for index in range(total):
            due = began + index / requests_per_second
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            gateway, round_ = index % gateways, index // gateways
            body = _gateway_batch(prefix, gateway, round_, readings_per_request, start_at)
            tasks.append(asyncio.create_task(one(due, body)))
        await asyncio.gather(*tasks)
    finally:
        for connection in opened:
            connection.close()
    latencies.sort()
    return OpenLoadResult(
        due=total,
        acknowledged=len(latencies),
        failed=failures,
        overloaded=overloaded,
        errors=errors,
        seconds=seconds,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        readings_per_request=readings_per_request,
    )


class _Connection:
    """One keep-alive HTTP/1.1 connection doing one request at a time.

    Not httpx: it queues requests waiting for a pooled connection in a list it rescans for
    every request, so a lagging server would make the generator itself the bottleneck, and a
    client per connection costs an SSL context each. This needs only POST with a body and a
    status back.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.authorization = "".join(f"{k}: {v}\r\n" for k, v in api_headers().items())

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> int:
        """Send one JSON POST; returns the status code once the whole answer is read."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
            f"{self.authorization}Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            ),
            0,
        )
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _percentile(ordered: list[float], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

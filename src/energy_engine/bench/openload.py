"""Open-model load: requests start on a fixed schedule, whatever the server's latency.

wrk is a closed model (a connection waits for its answer before the next request), which
hides queueing: a slow server simply gets fewer requests. Here request i is due at
start + i / rate, and its latency counts from that due time (no coordinated omission), so a
server that falls behind shows it in the percentiles. Hand-written because the one maintained
open-model tool (wrk2) is not packaged for Debian; at a few hundred requests a second httpx
keeps up comfortably.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson


@dataclass(frozen=True, slots=True)
class OpenLoadResult:
    """What an open-model run achieved."""

    due: int  # requests the schedule called for
    acknowledged: int  # answered 2xx
    failed: int  # answered otherwise or not at all
    seconds: float
    p50_ms: float
    p99_ms: float
    readings_per_request: int

    @property
    def readings_per_second(self) -> float:
        """Acknowledged readings per second of the schedule."""
        return self.acknowledged * self.readings_per_request / self.seconds


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
    gateways: int = 200,
) -> OpenLoadResult:
    """Send `readings_per_request`-reading batches to POST /v1/ingest at a fixed rate."""
    start_at = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=10)
    total = int(requests_per_second * seconds)
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:

        async def one(due: float, body: bytes) -> None:
            nonlocal failures
            try:
                response = await http.post("/v1/ingest", content=body, headers=headers)
            except httpx.HTTPError:
                failures += 1
                return
            if response.status_code == 200:
                latencies.append(time.perf_counter() - due)
            else:
                failures += 1

        tasks = []
        began = time.perf_counter()
        for index in range(total):
            due = began + index / requests_per_second
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            gateway, round_ = index % gateways, index // gateways
            body = _gateway_batch(prefix, gateway, round_, readings_per_request, start_at)
            tasks.append(asyncio.create_task(one(due, body)))
        await asyncio.gather(*tasks)
    latencies.sort()
    return OpenLoadResult(
        due=total,
        acknowledged=len(latencies),
        failed=failures,
        seconds=seconds,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        readings_per_request=readings_per_request,
    )


def _percentile(ordered: list[float], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

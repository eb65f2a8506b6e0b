"""Post a simulated fleet's readings and assignments over HTTP as it steps.

Readings go to POST /v1/ingest as mixed batches from a few concurrent requests; a 503 is
retried after its Retry-After. Assignments go to POST /v1/assignments one at a time, in the
order the vehicles plugged in, so none starts before a boundary already recorded.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson

from energy_engine.simulate.fleet import MINUTE, Fleet, Plug, Reading
from energy_engine.simulate.stats import Observer, Stats

JSON = {"content-type": "application/json"}
# Sends one batch of readings and counts the outcome in the stats.
SendReadings = Callable[[list[Reading], Stats], Awaitable[None]]
OVERLOAD_ATTEMPTS = 60  # a 503 asks for 1 s: a minute of overload is worth waiting out
TRANSPORT_ATTEMPTS = 5


class GaveUp(Exception):
    """The API stayed unreachable or overloaded."""


class KeyRefused(GaveUp):
    """The engine refused the API key (401 or 403): every later request would be too."""


@dataclass(slots=True)
class Pace:
    """Simulated time: `speedup` times real time from `start`, never past the wall clock."""

    start: datetime
    speedup: float | None  # None: as fast as readings can be made
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def wait_for(self, at: datetime) -> float:
        """Seconds until simulated time reaches `at` (0 when it has)."""
        to_wall = (at - datetime.now(UTC)).total_seconds()
        if self.speedup is None:
            return max(0.0, to_wall)
        to_pace = (at - self.start).total_seconds() / self.speedup
        return max(0.0, to_wall, to_pace - (time.monotonic() - self.started))

    async def until(self, at: datetime) -> None:
        """Sleep until simulated time reaches `at`."""
        # The event loop never wakes a sleeper early by more than its clock's resolution.
        await asyncio.sleep(self.wait_for(at))


async def _post(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    """POST, retrying a 503 or 429 after its Retry-After and a broken connection after a
    backoff; giving up at once when the API key is refused."""
    overloaded = broken = 0
    while True:
        try:
            response = await client.post(path, content=body, headers=JSON)
        except httpx.TransportError as exc:
            broken += 1
            if broken >= TRANSPORT_ATTEMPTS:
                raise GaveUp(f"POST {path}: {exc!r}") from None
            await asyncio.sleep(0.2 * 2**broken)
            continue
        if response.status_code in (401, 403):
            raise KeyRefused(
                f"POST {path}: {response.status_code} {response.text[:300]}; give a key with "
                "the ingest and admin scopes by --api-key or ENERGY_API_KEY"
            )
        if response.status_code not in (429, 503):
            return response
        overloaded += 1
        if overloaded >= OVERLOAD_ATTEMPTS:
            raise GaveUp(f"POST {path}: still overloaded after {overloaded} tries")
        await asyncio.sleep(_retry_after(response))


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def post_readings(client: httpx.AsyncClient, readings: list[Reading], stats: Stats) -> None:
    """Send one mixed batch and count the answer."""
    try:
        response = await _post(client, "/v1/ingest", orjson.dumps(readings))
    except KeyRefused:
        raise
    except GaveUp as exc:
        stats.rejected += len(readings)
        stats.fail(str(exc))
        return
    if response.status_code == 200:
        answer = response.json()
        stats.accepted += answer["accepted"]
        stats.duplicates += answer["duplicates"]
    else:
        stats.rejected += len(readings)
        stats.fail(f"POST /v1/ingest: {response.status_code} {response.text[:500]}")


async def post_assignments(client: httpx.AsyncClient, plugs: Iterable[Plug], stats: Stats) -> None:
    """Send assignments one at a time, in order: each may close the one before it."""
    for plug in plugs:
        try:
            response = await _post(client, "/v1/assignments", orjson.dumps(plug))
        except KeyRefused:
            raise
        except GaveUp as exc:
            stats.assignment_errors += 1
            stats.fail(str(exc))
            continue
        if response.status_code == 201:
            stats.assignments += 1
        elif response.status_code == 200:
            stats.assignments_unchanged += 1
        elif response.status_code == 409:
            stats.assignment_conflicts += 1
        else:
            stats.assignment_errors += 1
            stats.fail(f"POST /v1/assignments: {response.status_code} {response.text[:500]}")


async def simulate(
    client: httpx.AsyncClient,
    fleet: Fleet,
    *,
    end: datetime | None,
    speedup: float | None = None,
    batch_size: int = 1000,
    concurrency: int = 4,
    stats: Stats | None = None,
    observe: Observer | None = None,
    send_readings: SendReadings | None = None,
) -> Stats:
    """Step `fleet` through `end` (forever when None) at `speedup`, posting as it goes;
    `send_readings` sends the readings another way than POST /v1/ingest (e.g. MQTT)."""
    stats = stats if stats is not None else Stats()

    async def post(batch: list[Reading], stats: Stats) -> None:
        await post_readings(client, batch, stats)

    send = send_readings or post
    batches: asyncio.Queue[list[Reading] | None] = asyncio.Queue(maxsize=2 * concurrency)
    plugs: asyncio.Queue[Plug | None] = asyncio.Queue()

    async def send_batches() -> None:
        while (batch := await batches.get()) is not None:
            await send(batch, stats)
            if observe:
                observe(stats)

    async def send_plugs() -> None:
        while (plug := await plugs.get()) is not None:
            await post_assignments(client, [plug], stats)

    try:
        async with asyncio.TaskGroup() as tasks:
            senders = [tasks.create_task(send_batches()) for _ in range(concurrency)]
            tasks.create_task(send_plugs())
            pace = Pace(fleet.now, speedup)
            await _produce(fleet, end, pace, batch_size, batches, plugs, stats)
            for _ in senders:
                await batches.put(None)
            plugs.put_nowait(None)
    except ExceptionGroup as group:
        refused = group.subgroup(KeyRefused)
        if refused is None:
            raise
        raise refused.exceptions[0] from None  # one line for the user: the key was refused
    return stats


async def _produce(
    fleet: Fleet,
    end: datetime | None,
    pace: Pace,
    batch_size: int,
    batches: asyncio.Queue[list[Reading] | None],
    plugs: asyncio.Queue[Plug | None],
    stats: Stats,
) -> None:
    """Step the fleet and queue its readings: full batches, except when waiting for time.

    At the pace of the simulation a minute's readings go out in a few parts spread over the
    minute, as devices would send them, rather than in one burst on the minute.
    """
    pending: list[Reading] = []

    async def flush(everything: bool) -> None:
        while len(pending) >= batch_size or (everything and pending):
            await batches.put(pending[:batch_size])
            del pending[:batch_size]

    while end is None or fleet.now <= end:
        if pace.wait_for(fleet.now) > 0:
            await flush(everything=True)
            await pace.until(fleet.now)
        minute = fleet.step()
        for plug in minute.plugs:
            plugs.put_nowait(plug)
        stats.readings += len(minute.readings)
        parts = max(1, math.ceil(len(minute.readings) / batch_size))
        size = math.ceil(len(minute.readings) / parts)
        for part in range(parts):
            due = minute.at + part * MINUTE / parts
            if pace.wait_for(due) > 0:
                await flush(everything=True)
                await pace.until(due)
            pending.extend(minute.readings[part * size : (part + 1) * size])
            await flush(everything=False)
        await asyncio.sleep(0)  # let the senders run even when no queue is full
    await flush(everything=True)

"""Group commit: concurrent requests' readings share one statement and one commit.

A request's readings join a bounded in-memory queue and the request waits for its future.
A few writer tasks, each on its own connection, take everything queued (up to a size cap),
write it with one statement per stream in one transaction, and resolve each request's future
with its own accepted/duplicate counts. Nothing is answered before it is committed, so nothing
acknowledged can be lost. A lone reading is written at once; under load the queue fills while
a commit is in flight and the next flush takes it all, so batches grow with the load without
any timer holding readings back. This is hand-written because no maintained library does
group commit for asyncpg; it is a queue, a loop and a bisect.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from energy_engine.db import Pool
from energy_engine.errors import log_outage, outage
from energy_engine.ingest.models import IngestResult, MeterReading, Queued, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.observability import metrics

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full (or the writer is shutting down): the client should retry later."""

    def __init__(
        self, message: str = "the write queue is full; retry shortly", retry_after: int = 1
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Writer(Protocol):
    """Where every transport hands its validated readings (`app.state.writer`): the group
    commit (`GroupWriter`, an `IngestResult` once committed) or, in queue mode, the JetStream
    publisher (`queue.publisher`, a `Queued` once the stream stored them). Both raise
    `Overloaded` when the client should retry later."""

    @property
    def queued(self) -> int:
        """Readings accepted and waiting in this process."""
        ...

    async def submit(
        self,
        meters: Sequence[MeterReading],
        vehicles: Sequence[VehicleReading],
        transport: str = "http",
    ) -> IngestResult | Queued: ...

    async def close(self) -> None:
        """Finish what was accepted and stop."""


@dataclass(slots=True)
class _Request:
    meters: Sequence[MeterReading]
    vehicles: Sequence[VehicleReading]
    transport: str
    done: asyncio.Future[IngestResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def size(self) -> int:
        return len(self.meters) + len(self.vehicles)


def _count_in(positions: list[int], start: int, stop: int) -> int:
    """How many sorted 1-based positions fall in [start, stop)."""
    return bisect.bisect_left(positions, stop) - bisect.bisect_left(positions, start)


class GroupWriter:
    """Coalesces concurrent ingest requests into shared statements and commits."""

    def __init__(self, pool: Pool, *, writers: int, max_queued: int, max_flush: int) -> None:
        self._pool = pool
        self._writers = writers
        self._max_queued = max_queued
        self._max_flush = max_flush
        self._queue: deque[_Request] = deque()
        self._queued = 0
        self._wake = asyncio.Condition()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.flushes = 0  # statements' transactions committed, for tests and metrics

    @property
    def queued(self) -> int:
        """Readings waiting for a flush."""
        return self._queued

    def start(self) -> None:
        """Start the writer tasks."""
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self._writers)]

    async def close(self) -> None:
        """Refuse new requests, write everything queued, stop the writers."""
        async with self._wake:
            self._closing = True
            self._wake.notify_all()
        await asyncio.gather(*self._tasks)

    async def submit(
        self,
        meters: Sequence[MeterReading],
        vehicles: Sequence[VehicleReading],
        transport: str = "http",
    ) -> IngestResult:
        """Queue one request's readings; returns once they are committed. `transport` names
        where they came from in the metrics."""
        request = _Request(meters, vehicles, transport)
        async with self._wake:
            # An empty queue takes any request: a batch larger than the bound must still pass.
            if self._closing or (self._queued and self._queued + request.size > self._max_queued):
                raise Overloaded
            self._queue.append(request)
            self._queued += request.size
            self._wake.notify()
        # Shielded: a client that hangs up does not cancel a write other requests share.
        return await asyncio.shield(request.done)

    async def _take(self) -> list[_Request] | None:
        async with self._wake:
            await self._wake.wait_for(lambda: bool(self._queue) or self._closing)
            if not self._queue:
                return None  # closing and drained
            taken = [self._queue.popleft()]
            size = taken[0].size
            while self._queue and size + self._queue[0].size <= self._max_flush:
                request = self._queue.popleft()
                taken.append(request)
                size += request.size
            self._queued -= size
            return taken

    async def _run(self) -> None:
        while (requests := await self._take()) is not None:
            try:
                await self._flush(requests)
            except Exception as exc:  # every waiting request learns of it; the loop goes on
                # Nothing of the flush is acknowledged: each request answers 503 (the database
                # unreachable, errors.unavailable) or 500, and the client retries; a retried
                # reading that did commit is counted as a duplicate and stored once.
                found = outage(exc)
                if found is None:
                    log.exception("group commit of %d requests failed", len(requests))
                else:
                    log_outage("group commit", found)
                for request in requests:
                    if not request.done.done():
                        request.done.set_exception(exc)

    async def _flush(self, requests: list[_Request]) -> None:
        meters = [r for request in requests for r in request.meters]
        vehicles = [r for request in requests for r in request.vehicles]
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            new_meters, new_vehicles = await write_readings(conn, meters, vehicles)
        metrics.observe_commit(len(meters) + len(vehicles), time.perf_counter() - started)
        self.flushes += 1
        # Per transport: readings and new ones, meters then vehicles.
        counts: dict[str, list[int]] = {}
        meter_at, vehicle_at = 1, 1
        for request in requests:
            new_meter = _count_in(new_meters, meter_at, meter_at + len(request.meters))
            new_vehicle = _count_in(new_vehicles, vehicle_at, vehicle_at + len(request.vehicles))
            meter_at += len(request.meters)
            vehicle_at += len(request.vehicles)
            count = counts.setdefault(request.transport, [0, 0, 0, 0])
            count[0] += len(request.meters)
            count[1] += new_meter
            count[2] += len(request.vehicles)
            count[3] += new_vehicle
            accepted = new_meter + new_vehicle
            if not request.done.done():
                request.done.set_result(
                    IngestResult(accepted=accepted, duplicates=request.size - accepted)
                )
        for transport, (meter_count, new_meter, vehicle_count, new_vehicle) in counts.items():
            metrics.count_stored(transport, "meter", meter_count, new_meter)
            metrics.count_stored(transport, "vehicle", vehicle_count, new_vehicle)

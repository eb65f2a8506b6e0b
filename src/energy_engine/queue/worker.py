"""`energy-engine worker`: readings from the JetStream stream into PostgreSQL.

Each loop fetches a batch from the shared durable consumer, writes it with the ingest write
path (`ingest.store.write_readings`: one transaction) and acknowledges every message after the
commit. A worker that dies before acknowledging leaves its batch to be delivered again after
`queue_ack_wait`; one that dies after the commit but before the acknowledgements has its batch
written again, and the inserts, idempotent on (device, timestamp), store nothing twice. When
the database fails, the batch is handed back with a delay (nak) and the loop waits: nothing is
lost, the backlog waits in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.errors
import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from energy_engine import db
from energy_engine.errors import outage
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.observability import metrics
from energy_engine.queue import stream
from energy_engine.queue.publisher import READINGS_PER_MESSAGE as PER_MESSAGE
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0  # how long a fetch waits for readings before the loop looks round
MORE_WAIT_S = 0.01  # how long a fetch topping up a batch waits: only what is there
MAX_BACKOFF_S = 5.0  # the longest pause (and redelivery delay) after a failed write


@dataclass(slots=True)
class Batch:
    """Fetched messages decoded: the readings of each stream and transport."""

    meters: list[MeterReading] = field(default_factory=list)
    vehicles: list[VehicleReading] = field(default_factory=list)
    # (transport, stream) -> [readings, positions (1-based) in meters / vehicles]
    origins: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    transports: list[str] = field(default_factory=list)  # per meter, then per vehicle


def _meters(rows: list[list[Any]]) -> list[MeterReading]:
    # Validated by the API before it was published; building without validating again also
    # keeps a reading that waited in the stream longer than max_reading_age.
    return [
        MeterReading.model_construct(
            meter_id=device,
            timestamp=datetime.fromisoformat(at),
            kwh_consumed_ac=kwh,
            voltage=voltage,
        )
        for device, at, kwh, voltage in rows
    ]


def _vehicles(rows: list[list[Any]]) -> list[VehicleReading]:
    return [
        VehicleReading.model_construct(
            vehicle_id=device,
            timestamp=datetime.fromisoformat(at),
            soc=soc,
            kwh_delivered_dc=kwh,
            battery_temp=temp,
        )
        for device, at, soc, kwh, temp in rows
    ]


def decode(messages: Sequence[Msg], prefix: str) -> tuple[Batch, list[Msg], list[Msg]]:
    """The batch of readings, the messages it holds and those that hold no readings."""
    batch = Batch()
    good: list[Msg] = []
    bad: list[Msg] = []
    meter_transports: list[str] = []
    vehicle_transports: list[str] = []
    for msg in messages:
        transport = msg.subject.removeprefix(prefix + ".")
        try:
            data = orjson.loads(msg.data)
            meters, vehicles = _meters(data["meters"]), _vehicles(data["vehicles"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("dropping a message on %s that holds no readings: %s", msg.subject, exc)
            bad.append(msg)
            continue
        batch.meters += meters
        batch.vehicles += vehicles
        meter_transports += [transport] * len(meters)
        vehicle_transports += [transport] * len(vehicles)
        good.append(msg)
    batch.transports = meter_transports + vehicle_transports
    return batch, good, bad


def _readings_in(msg: Msg) -> int:
    """Readings a message holds, from its size (about 80 bytes each), for sizing fetches."""
    return max(1, len(msg.data) // 80)


def _count(batch: Batch, new_meters: list[int], new_vehicles: list[int]) -> None:
    """The metrics of a committed batch, per transport and stream."""
    counts: dict[tuple[str, str], list[int]] = {}
    new = set(new_meters)
    for position, transport in enumerate(batch.transports[: len(batch.meters)], start=1):
        count = counts.setdefault((transport, "meter"), [0, 0])
        count[0] += 1
        count[1] += position in new
    new = set(new_vehicles)
    for position, transport in enumerate(batch.transports[len(batch.meters) :], start=1):
        count = counts.setdefault((transport, "vehicle"), [0, 0])
        count[0] += 1
        count[1] += position in new
    for (transport, kind), (readings, accepted) in counts.items():
        metrics.count_stored(transport, kind, readings, accepted)


class Worker:
    """Writes the stream's readings to PostgreSQL with `loops` fetch-write-ack loops."""

    def __init__(self, js: JetStreamContext, pool: db.Pool, settings: Settings) -> None:
        self._js = js
        self._pool = pool
        self._settings = settings
        self.written = 0  # messages committed and acknowledged, for tests and logs

    async def run(self, loops: int) -> None:
        """Run until cancelled."""
        await asyncio.gather(*(self._loop() for _ in range(loops)))

    async def _loop(self) -> None:
        settings = self._settings
        sub = await self._js.pull_subscribe_bind(settings.queue_consumer, settings.queue_stream)
        failures = 0
        while True:
            try:
                messages = await self._fetch(sub)
            except (nats.errors.Error, OSError, TimeoutError) as exc:  # reconnecting, or a
                # stream leader being elected: the connection comes back by itself
                log.warning("fetch failed: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(0.5)
                continue
            if not messages:
                continue
            if await self._write(messages):
                failures = 0
                continue
            failures += 1
            await asyncio.sleep(min(MAX_BACKOFF_S, 0.25 * 2**failures))

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """Messages for one commit: what is there, up to about max_flush_readings readings
        (messages hold one reading or a whole request's)."""
        settings = self._settings
        # The first ask assumes whole requests' messages (the most readings a message holds);
        # a batch of lone readings is topped up below.
        first = max(1, min(settings.queue_batch, settings.max_flush_readings // PER_MESSAGE))
        try:
            messages = await sub.fetch(first, timeout=FETCH_WAIT_S)
        except nats.errors.TimeoutError:
            return []
        readings = sum(_readings_in(m) for m in messages)
        asked, got = first, len(messages)
        while got == asked and readings < settings.max_flush_readings:
            per_message = readings / len(messages)
            left = settings.max_flush_readings - readings
            asked = max(1, min(settings.queue_batch, int(left / per_message)))
            try:
                more = await sub.fetch(asked, timeout=MORE_WAIT_S)
            except nats.errors.TimeoutError:
                break
            got = len(more)
            messages += more
            readings += sum(_readings_in(m) for m in more)
        return messages

    async def _write(self, messages: list[Msg]) -> bool:
        """Commit and acknowledge one fetched batch; False when it was handed back."""
        batch, good, bad = decode(messages, self._settings.queue_subject_prefix)
        for msg in bad:  # never deliverable: kept out of the way of the others
            await msg.term()
        if not good:
            return True
        started = time.perf_counter()
        try:
            async with self._pool.acquire() as conn:
                new_meters, new_vehicles = await write_readings(conn, batch.meters, batch.vehicles)
        except Exception as exc:  # handed back for later; the stream keeps them meanwhile
            found = outage(exc)
            if found is None:
                log.exception("writing %d queued readings failed", len(good))
            else:
                log.warning("writing queued readings: database unavailable: %s", found.reason)
            for msg in good:
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=MAX_BACKOFF_S)
            return False
        metrics.observe_commit(len(good), time.perf_counter() - started)
        for msg in good:
            # Lost acknowledgements (a broken connection) mean a redelivery, and the inserts
            # store nothing twice.
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
        _count(batch, new_meters, new_vehicles)
        self.written += len(good)
        return True


async def run(settings: Settings, url: str, ready: asyncio.Event | None = None) -> None:
    """Connect to NATS and PostgreSQL and write the stream's readings until cancelled."""
    nc = await stream.connect(settings, "energy-engine-worker")
    pool: db.Pool | None = None
    try:
        js = stream.jetstream(nc, settings)
        await stream.ensure_stream(js, settings)
        pool = await db.create_writer_pool(url, settings)
        worker = Worker(js, pool, settings)
        log.info(
            "worker writing stream %s (consumer %s) with %d connections",
            settings.queue_stream,
            settings.queue_consumer,
            settings.writer_connections,
        )
        if ready is not None:
            ready.set()
        await worker.run(settings.writer_connections)
    finally:
        await stream.close(nc)
        if pool is not None:
            await pool.close()

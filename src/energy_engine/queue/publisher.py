"""The ingest side of queue mode: readings published to JetStream, one message each.

`Publisher` takes the group-commit writer's place as `app.state.writer`, so every transport
that submits readings (HTTP, MQTT) gets queue mode. A request is answered once JetStream has
stored all its readings (each on the stream's replicas), so nothing acknowledged can be lost.
Each message carries `Nats-Msg-Id: stream:device:timestamp`: a reading sent twice within the
stream's duplicate window is stored once there, and PostgreSQL's inserts are idempotent on
(device, timestamp) beyond it.

The messages of a request are published without waiting for each acknowledgement (one round
trip for the whole batch). Those that fail for a reason that passes (the connection lost and
being re-established, a stream leader being elected, no answer in time) are published again
until `queue_publish_timeout` has passed; the message id makes a retry of one that was in fact
stored harmless. A stream at its limits refuses at once: the client is told to retry later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from energy_engine.ingest.models import MeterReading, Queued, VehicleReading
from energy_engine.ingest.writer import Overloaded
from energy_engine.observability import metrics
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
# JetStream's error code for a publish its store refused: the stream is at max_bytes or
# max_msgs (discard policy new), or the server out of JetStream storage.
STORE_REFUSED = (10077, 10047, 10023)
RETRY_PAUSE_S = 0.25


def subject(prefix: str, transport: str, stream: str) -> str:
    """Where a reading of `stream` (meter, vehicle) that came over `transport` is published."""
    return f"{prefix}.{transport}.{stream}"


def _message(reading: MeterReading | VehicleReading) -> tuple[str, bytes]:
    """A reading's message id and payload (the JSON the API takes)."""
    if isinstance(reading, MeterReading):
        device = "meter:" + reading.meter_id
    else:
        device = "vehicle:" + reading.vehicle_id
    # The instant in UTC, so that two spellings of one timestamp are one id.
    at = reading.timestamp.astimezone(UTC).isoformat()
    return f"{device}:{at}", reading.model_dump_json(by_alias=True).encode()


class QueueFull(Overloaded):
    """The stream is at its limits: nothing more is accepted until the workers catch up."""


class Publisher:
    """Publishes readings to the JetStream stream; answers once all are stored."""

    def __init__(self, nc: Client, js: JetStreamContext, settings: Settings) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings
        self._in_flight = 0
        self._retry_after = max(1, round(settings.unavailable_retry_after.total_seconds()))

    @property
    def queued(self) -> int:
        """Readings published and waiting for JetStream's acknowledgement."""
        return self._in_flight

    async def submit(
        self,
        meters: Sequence[MeterReading],
        vehicles: Sequence[VehicleReading],
        transport: str = "http",
    ) -> Queued:
        """Publish one request's readings; returns once JetStream stored every one."""
        prefix = self._settings.queue_subject_prefix
        messages = [(subject(prefix, transport, "meter"), *_message(r)) for r in meters] + [
            (subject(prefix, transport, "vehicle"), *_message(r)) for r in vehicles
        ]
        size = len(messages)
        self._in_flight += size
        try:
            await self._publish_all(messages)
        finally:
            self._in_flight -= size
        metrics.count_queued(transport, "meter", len(meters))
        metrics.count_queued(transport, "vehicle", len(vehicles))
        return Queued(queued=size)

    async def _publish_all(self, messages: list[tuple[str, str, bytes]]) -> None:
        deadline = time.monotonic() + self._settings.queue_publish_timeout.total_seconds()
        waiting = messages
        while True:
            left = deadline - time.monotonic()
            failed, last = await self._publish(waiting, left) if left > 0 else (waiting, None)
            if not failed:
                return
            if time.monotonic() + RETRY_PAUSE_S >= deadline:
                log.warning("%d readings not stored by JetStream in time: %s", len(failed), last)
                raise Overloaded(
                    f"the queue is unavailable ({type(last).__name__ if last else 'timeout'}); "
                    "retry shortly",
                    self._retry_after,
                )
            await asyncio.sleep(RETRY_PAUSE_S)
            waiting = failed

    async def _publish(
        self, messages: list[tuple[str, str, bytes]], wait_s: float
    ) -> tuple[list[tuple[str, str, bytes]], BaseException | None]:
        """Publish `messages` at once; those to publish again, and the last error."""
        futures: list[asyncio.Future[PubAck] | None] = []
        last: BaseException | None = None
        try:
            for topic, msg_id, payload in messages:
                futures.append(
                    await self._js.publish_async(
                        topic, payload, wait_stall=wait_s, headers={MSG_ID: msg_id}
                    )
                )
        except (nats.errors.Error, OSError) as exc:  # disconnected: the rest are retried
            last = exc
        pending = [f for f in futures if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=wait_s)
        failed = []
        for message, future in zip(
            messages, futures + [None] * (len(messages) - len(futures)), strict=True
        ):
            if future is None:
                failed.append(message)
                continue
            if not future.done() or future.cancelled():
                future.cancel()  # releases its place among the pending publishes
                failed.append(message)
                last = last or TimeoutError("no acknowledgement in time")
                continue
            error = future.exception()
            if error is None:
                continue
            if isinstance(error, APIError) and error.err_code in STORE_REFUSED:
                raise QueueFull(
                    f"the queue is full ({error.description}); retry shortly", self._retry_after
                )
            last = error
            failed.append(message)
        return failed, last

    async def close(self) -> None:
        """Wait for publishes in flight, then close the connection."""
        try:
            await asyncio.wait_for(self._js.publish_async_completed(), timeout=5)
        except TimeoutError:
            log.warning("closing NATS with publishes unacknowledged")
        await self._nc.close()

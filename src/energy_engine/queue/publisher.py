"""The ingest side of queue mode: a request's readings published to JetStream.

`Publisher` takes the group-commit writer's place as `app.state.writer`, so every transport
that submits readings (HTTP, MQTT) gets queue mode. A request is answered once JetStream has
stored all its readings (each on the stream's replicas), so nothing acknowledged can be lost.
A message holds a request's readings of one stream (up to READINGS_PER_MESSAGE). Its
`Nats-Msg-Id` is `stream:device:timestamp` for a lone reading (a device's own POST), else a
digest of its readings: a request retried within the stream's duplicate window is stored once there,
and PostgreSQL's inserts, idempotent on (device, timestamp), store each reading once whatever
the stream holds.

The messages of a request are published without waiting for each other's acknowledgement (one
round trip for the whole batch). Those that fail for a reason that passes (the connection lost and
being re-established, a stream leader being elected, no answer in time) are published again
until `queue_publish_timeout` has passed; the message id makes a retry of one that was in fact
stored harmless. A stream at its limits refuses at once: the client is told to retry later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC

import nats.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError

from energy_engine.ingest.models import MeterReading, Queued, VehicleReading
from energy_engine.ingest.writer import Overloaded
from energy_engine.observability import metrics
from energy_engine.queue import stream
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
# JetStream's error code for a publish its store refused: the stream is at max_bytes or
# max_msgs (discard policy new), or the server out of JetStream storage.
STORE_REFUSED = (10077, 10047, 10023)
RETRY_PAUSE_S = 0.25
# Readings per message. nats-py spends 100-200 us of Python per published message (1,000
# one-reading messages: 0.1 s with publish_async, 0.2 s with gathered publish, on one core of
# this machine), which would cap a process near 5,000-10,000 readings/s; a message per request
# (cut at this size, well under NATS's 1 MB max_payload) costs one publish however large.
READINGS_PER_MESSAGE = 1000


def subject(prefix: str, transport: str) -> str:
    """Where readings that came over `transport` are published."""
    return f"{prefix}.{transport}"


def _key(reading: MeterReading | VehicleReading) -> str:
    """`stream:device:timestamp`, the instant in UTC (two spellings of one time are one key)."""
    at = reading.timestamp.astimezone(UTC).isoformat()
    if isinstance(reading, MeterReading):
        return f"meter:{reading.meter_id}:{at}"
    return f"vehicle:{reading.vehicle_id}:{at}"


def message_id(readings: Sequence[MeterReading | VehicleReading], body: bytes) -> str:
    """The message's `Nats-Msg-Id`: a lone reading's key, else a digest of the message's body
    (its readings, as validated), so that a retried request is stored once in the stream."""
    if len(readings) == 1:
        return _key(readings[0])
    return "readings:" + hashlib.blake2b(body, digest_size=16).hexdigest()


def messages(
    prefix: str,
    transport: str,
    meters: Sequence[MeterReading],
    vehicles: Sequence[VehicleReading],
) -> list[tuple[str, str, bytes]]:
    """(subject, message id, body) of each message holding a request's readings: one stream
    a message, up to READINGS_PER_MESSAGE each, as compact JSON rows (`queue.worker.decode`
    reads them back)."""
    topic = subject(prefix, transport)
    out = []
    for start in range(0, len(meters), READINGS_PER_MESSAGE):
        chunk_m = meters[start : start + READINGS_PER_MESSAGE]
        rows = [(r.meter_id, r.timestamp, r.kwh_consumed_ac, r.voltage) for r in chunk_m]
        body = orjson.dumps({"meters": rows, "vehicles": []})
        out.append((topic, message_id(chunk_m, body), body))
    for start in range(0, len(vehicles), READINGS_PER_MESSAGE):
        chunk_v = vehicles[start : start + READINGS_PER_MESSAGE]
        vehicle_rows = [
            (r.vehicle_id, r.timestamp, r.soc, r.kwh_delivered_dc, r.battery_temp) for r in chunk_v
        ]
        body = orjson.dumps({"meters": [], "vehicles": vehicle_rows})
        out.append((topic, message_id(chunk_v, body), body))
    return out


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
        size = len(meters) + len(vehicles)
        self._in_flight += size
        try:
            await self._publish_all(
                messages(self._settings.queue_subject_prefix, transport, meters, vehicles)
            )
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
                log.warning("%d messages not stored by JetStream in time: %s", len(failed), last)
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
        # Concurrent `publish` calls (each a request awaiting its acknowledgement) rather than
        # nats-py's `publish_async`: its reply handler raises a refusal (a full stream) inside
        # the subscription callback instead of failing the future, which then never resolves.
        answers = await asyncio.gather(
            *(
                self._js.publish(topic, payload, timeout=wait_s, headers={MSG_ID: msg_id})
                for topic, msg_id, payload in messages
            ),
            return_exceptions=True,
        )
        failed = []
        last: BaseException | None = None
        for message, answer in zip(messages, answers, strict=True):
            if not isinstance(answer, BaseException):
                continue
            if isinstance(answer, APIError) and answer.err_code in STORE_REFUSED:
                raise QueueFull(
                    f"the queue is full ({answer.description}); retry shortly", self._retry_after
                )
            if not isinstance(answer, nats.errors.Error | OSError | TimeoutError):
                raise answer  # a bug, not an outage
            last = answer
            failed.append(message)
        return failed, last

    async def close(self) -> None:
        """Close the connection (every request has been answered by now)."""
        await stream.close(self._nc)

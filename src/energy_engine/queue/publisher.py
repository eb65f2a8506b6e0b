"""The ingest side of queue mode: readings published to JetStream, one message each.

`Publisher` takes the group-commit writer's place as `app.state.writer`, so every transport
that submits readings (HTTP, MQTT) gets queue mode. A request is answered once JetStream has
stored all its readings (each on the stream's replicas), so nothing acknowledged can be lost.
Each message carries `Nats-Msg-Id: stream:device:timestamp`: a reading sent twice within the
stream's duplicate window is stored once there, and PostgreSQL's inserts are idempotent on
(device, timestamp) beyond it.

The messages of a request are published without waiting for each other's acknowledgement (one
round trip for the whole batch). Those that fail for a reason that passes (the connection lost and
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

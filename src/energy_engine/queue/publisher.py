"""The ingest side of queue mode: a request's readings published to JetStream.

`Publisher` takes the group-commit writer's place as `app.state.writer`, so every transport
that submits readings (HTTP, MQTT) gets queue mode. A request is answered once JetStream has
stored all its readings (each on the stream's replicas), so nothing acknowledged can be lost.

What a message holds is a setting (`queue_message_per`):
- `request` (default): a request's readings of one stream, up to READINGS_PER_MESSAGE. Its
  `Nats-Msg-Id` is `stream:device:timestamp` for a lone reading, else a digest of its readings:
  a request retried within the stream's duplicate window is stored there once.
- `reading`: one reading, its `Nats-Msg-Id` `stream:device:timestamp`: a reading sent again
  within the window is stored once in the stream whatever request it comes back in, and a
  request refused half-way (a full stream) can be retried whole. It costs about three times
  the Python per reading, in the API and in the worker (docs/scaling.md).
Either way PostgreSQL's inserts, idempotent on (device, timestamp), store each reading once
whatever the stream holds.

A request's messages are published without waiting for each other's acknowledgement (one
round trip for the whole request). Those that fail for a reason that passes (the connection
lost and being re-established, a stream leader being elected, no answer in time) are published
again until `queue_publish_timeout` has passed; the message id makes a retry of one that was in
fact stored harmless. A stream at its limits refuses at once: the client is told to retry later.

Publishing is written on nats-py's core `publish` with one wildcard reply subscription instead
of `JetStreamContext.publish`: that one awaits a request (a reply subscription, a future and a
timer) per message, 100-200 us of Python each, against about 11 us here (one core of this
machine, acknowledgement included); and nats-py's `publish_async` fails no future when the
stream refuses a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from energy_engine.ingest.models import MeterReading, Queued, VehicleReading
from energy_engine.ingest.writer import Overloaded
from energy_engine.observability import metrics
from energy_engine.queue import stream
from energy_engine.settings import QueueMessage, Settings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
# JetStream's error code for a publish its store refused: the stream is at max_bytes or
# max_msgs (discard policy new), or the server out of JetStream storage.
STORE_REFUSED = (10077, 10047, 10023)
RETRY_PAUSE_S = 0.25
# How long a round of publishes waits for its acknowledgements before publishing the
# unanswered ones again (a message lost with a broken connection is never answered).
ROUND_WAIT_S = 2.0
# Readings per message of the `request` form: well under NATS's 1 MB max_payload.
READINGS_PER_MESSAGE = 1000

Message = tuple[str, str, bytes]  # (subject, message id, body)


def subject(prefix: str, transport: str) -> str:
    """Where readings that came over `transport` are published."""
    return f"{prefix}.{transport}"


def _at_and_key(reading: MeterReading | VehicleReading) -> tuple[str, str]:
    """The reading's instant in UTC (two spellings of one time are one key) and its message id
    `stream:device:instant`."""
    at = reading.timestamp.astimezone(UTC).isoformat()
    if isinstance(reading, MeterReading):
        return at, f"meter:{reading.meter_id}:{at}"
    return at, f"vehicle:{reading.vehicle_id}:{at}"


def message_id(readings: Sequence[MeterReading | VehicleReading], body: bytes) -> str:
    """A `request` message's `Nats-Msg-Id`: a lone reading's key, else a digest of the
    message's body (its readings, as validated), so that a retried request is stored once."""
    if len(readings) == 1:
        return _at_and_key(readings[0])[1]
    return "readings:" + hashlib.blake2b(body, digest_size=16).hexdigest()


def messages(
    prefix: str,
    transport: str,
    meters: Sequence[MeterReading],
    vehicles: Sequence[VehicleReading],
    per: QueueMessage = QueueMessage.REQUEST,
) -> list[Message]:
    """(subject, message id, body) of each message holding a request's readings
    (`queue.worker.decode` reads them back)."""
    topic = subject(prefix, transport)
    if per is QueueMessage.READING:
        return _per_reading(topic, meters, vehicles)
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


def _per_reading(
    topic: str, meters: Sequence[MeterReading], vehicles: Sequence[VehicleReading]
) -> list[Message]:
    """The `reading` form: a compact JSON row led by the stream's letter, id `meter:<id>:<UTC
    instant>` or `vehicle:...`."""
    out: list[Message] = []
    for m in meters:
        at, key = _at_and_key(m)
        out.append((topic, key, orjson.dumps(("m", m.meter_id, at, m.kwh_consumed_ac, m.voltage))))
    for v in vehicles:
        at, key = _at_and_key(v)
        row = ("v", v.vehicle_id, at, v.soc, v.kwh_delivered_dc, v.battery_temp)
        out.append((topic, key, orjson.dumps(row)))
    return out


@dataclass(slots=True)
class _Round:
    """The answers awaited for one request's publishes: index -> JetStream's answer."""

    waiting: int
    answers: dict[int, Msg] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _refusal(answer: Msg) -> tuple[int, str] | None:
    """JetStream's error code and description when `answer` refuses the message, else None
    (stored, or stored before: a duplicate)."""
    if answer.headers and answer.headers.get("Status"):  # e.g. 503: no stream leader yet
        return 0, f"status {answer.headers['Status']} {answer.headers.get('Description', '')}"
    if b'"error"' not in answer.data:
        return None
    error = orjson.loads(answer.data).get("error", {})
    return int(error.get("err_code", 0)), str(error.get("description", "error"))


class QueueFull(Overloaded):
    """The stream is at its limits: nothing more is accepted until the workers catch up."""


class Publisher:
    """Publishes readings to the JetStream stream; answers once all are stored."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings
        self._in_flight = 0
        self._retry_after = max(1, round(settings.unavailable_retry_after.total_seconds()))
        self._inbox = nc.new_inbox()
        self._rounds: dict[str, _Round] = {}
        self._next_round = 0
        self._replies: Subscription | None = None

    @classmethod
    async def open(cls, nc: Client, settings: Settings) -> Publisher:
        """A publisher on `nc`, subscribed to its acknowledgements."""
        publisher = cls(nc, settings)
        publisher._replies = await nc.subscribe(publisher._inbox + ".*.*", cb=publisher._answer)
        return publisher

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
            settings = self._settings
            prefix, per = settings.queue_subject_prefix, settings.queue_message_per
            await self._publish_all(messages(prefix, transport, meters, vehicles, per))
        finally:
            self._in_flight -= size
        metrics.count_queued(transport, "meter", len(meters))
        metrics.count_queued(transport, "vehicle", len(vehicles))
        return Queued(queued=size)

    async def _answer(self, msg: Msg) -> None:
        """JetStream's answer to one publish, `<inbox>.<round>.<index>`."""
        _, name, index = msg.subject.rsplit(".", 2)
        pending = self._rounds.get(name)
        if pending is None or int(index) in pending.answers:
            return  # a round given up, or an answer to a publish made twice
        pending.answers[int(index)] = msg
        if len(pending.answers) == pending.waiting:
            pending.done.set()

    async def _publish_all(self, messages: list[Message]) -> None:
        if not messages:
            return
        deadline = time.monotonic() + self._settings.queue_publish_timeout.total_seconds()
        waiting = messages
        while True:
            left = deadline - time.monotonic()
            failed, last = (
                await self._publish(waiting, min(left, ROUND_WAIT_S))
                if left > 0
                else (waiting, "no answer in time")
            )
            if not failed:
                return
            if time.monotonic() + RETRY_PAUSE_S >= deadline:
                log.warning("%d messages not stored by JetStream in time: %s", len(failed), last)
                raise Overloaded(
                    f"the queue is unavailable ({last}); retry shortly", self._retry_after
                )
            await asyncio.sleep(RETRY_PAUSE_S)
            waiting = failed

    async def _publish(self, messages: list[Message], wait_s: float) -> tuple[list[Message], str]:
        """Publish `messages` at once; those to publish again, and why the last one failed."""
        name = str(self._next_round)
        self._next_round += 1
        pending = self._rounds[name] = _Round(len(messages))
        reply = f"{self._inbox}.{name}."
        try:
            try:
                for index, (topic, msg_id, body) in enumerate(messages):
                    await self._nc.publish(
                        topic, body, reply=f"{reply}{index}", headers={MSG_ID: msg_id}
                    )
                await asyncio.wait_for(pending.done.wait(), wait_s)
            except (nats.errors.Error, OSError, TimeoutError) as exc:  # reconnecting, or
                # answers missing: those are published again
                why = f"{type(exc).__name__} {exc}".strip()
            else:
                why = "no answer in time"
        finally:
            del self._rounds[name]
        failed = []
        for index, message in enumerate(messages):
            answer = pending.answers.get(index)
            refusal = None if answer is None else _refusal(answer)
            if answer is not None and refusal is None:
                continue  # stored
            if refusal is not None:
                code, why = refusal
                if code in STORE_REFUSED:
                    raise QueueFull(f"the queue is full ({why}); retry shortly", self._retry_after)
            failed.append(message)
        return failed, why

    async def close(self) -> None:
        """Close the connection (every request has been answered by now)."""
        await stream.close(self._nc)

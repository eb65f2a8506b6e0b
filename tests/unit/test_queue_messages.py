"""Queue mode's messages: a message per reading, identified by device and instant; what the
API publishes is what the worker reads back, including a request's message from the earlier
one-message-per-request form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from energy_engine.ingest.models import MeterReading, VehicleReading
import orjson

from energy_engine.queue.publisher import messages
from energy_engine.queue.worker import decode

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Message:
    """The two fields of a NATS message the worker reads."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data


def meters(n: int) -> list[MeterReading]:
    return [
        MeterReading(meter_id=f"M{i}", kwh_consumed_ac=i + 0.5, voltage=230.0, timestamp=AT)
        for i in range(n)
    ]


def vehicles(n: int) -> list[VehicleReading]:
    return [
        VehicleReading(
            vehicle_id=f"V{i}", soc=50.5, kwh_delivered_dc=i + 0.25, battery_temp=25.0, timestamp=AT
        )
        for i in range(n)
    ]


def test_the_worker_reads_back_what_the_api_published() -> None:
    sent_meters, sent_vehicles = meters(1500), vehicles(3)
    published = messages("energy.readings", "mqtt", sent_meters, sent_vehicles)
    assert [topic for topic, _, _ in published] == ["energy.readings.mqtt"] * 1503
    received: list[Any] = [Message(topic, body) for topic, _, body in published]
    batch, good, bad = decode(received, "energy.readings")
    assert (good, bad) == (received, [])
    assert batch.meters == sent_meters
    assert batch.vehicles == sent_vehicles
    assert batch.transports == ["mqtt"] * 1503


def test_every_reading_is_identified_by_stream_device_and_instant() -> None:
    (one,) = meters(1)
    same_instant = one.model_copy(update={"timestamp": AT.astimezone(timezone(timedelta(hours=2)))})
    [(_, first, _)] = messages("p", "http", [one], [])
    [(_, again, _)] = messages("p", "http", [same_instant], [])
    assert first == again == "meter:M0:2026-11-29T12:00:00+00:00"
    ids = [msg_id for _, msg_id, _ in messages("p", "http", meters(3), vehicles(2))]
    assert ids == [
        "meter:M0:2026-11-29T12:00:00+00:00",
        "meter:M1:2026-11-29T12:00:00+00:00",
        "meter:M2:2026-11-29T12:00:00+00:00",
        "vehicle:V0:2026-11-29T12:00:00+00:00",
        "vehicle:V1:2026-11-29T12:00:00+00:00",
    ]


def test_a_backlog_in_the_earlier_one_message_per_request_form_is_read() -> None:
    sent = meters(2)
    rows = [[m.meter_id, m.timestamp.isoformat(), m.kwh_consumed_ac, m.voltage] for m in sent]
    old = Message("energy.readings.http", orjson.dumps({"meters": rows, "vehicles": []}))
    batch, good, bad = decode([old], "energy.readings")
    assert (batch.meters, batch.vehicles, good, bad) == (sent, [], [old], [])


def test_a_message_without_readings_is_set_apart() -> None:
    received: list[Any] = [
        Message("energy.readings.http", b"not json"),
        Message("x", b"{}"),
        Message("energy.readings.http", b'["x", "M1"]'),
    ]
    batch, good, bad = decode(received, "energy.readings")
    assert (batch.meters, batch.vehicles, good, bad) == ([], [], [], received)

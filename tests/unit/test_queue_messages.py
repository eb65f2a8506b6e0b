"""Queue mode's messages, in both forms (`queue_message_per`): what the API publishes is what
the worker reads back; a request's message ids repeat with a retried request, a reading's with
the same reading (device and instant) wherever it is sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.queue.publisher import READINGS_PER_MESSAGE, messages
from energy_engine.queue.worker import decode
from energy_engine.settings import QueueMessage

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


@pytest.mark.parametrize(
    ("per", "count"), [(QueueMessage.REQUEST, 3), (QueueMessage.READING, 1503)]
)
def test_the_worker_reads_back_what_the_api_published(per: QueueMessage, count: int) -> None:
    sent_meters, sent_vehicles = meters(1500), vehicles(3)
    published = messages("energy.readings", "mqtt", sent_meters, sent_vehicles, per)
    assert [topic for topic, _, _ in published] == ["energy.readings.mqtt"] * count
    received: list[Any] = [Message(topic, body) for topic, _, body in published]
    batch, good, bad = decode(received, "energy.readings")
    assert (good, bad) == (received, [])
    assert batch.meters == [
        (r.meter_id, r.timestamp, r.kwh_consumed_ac, r.voltage) for r in sent_meters
    ]
    assert batch.vehicles == [
        (r.vehicle_id, r.timestamp, r.soc, r.kwh_delivered_dc, r.battery_temp)
        for r in sent_vehicles
    ]
    assert batch.transports == ["mqtt"] * 1503
    assert max(len(m.data) for m in received) < 1024 * 1024  # NATS's default max_payload


@pytest.mark.parametrize("per", list(QueueMessage))
def test_a_lone_reading_is_identified_by_device_and_instant(per: QueueMessage) -> None:
    (one,) = meters(1)
    same_instant = one.model_copy(update={"timestamp": AT.astimezone(timezone(timedelta(hours=2)))})
    [(_, first, _)] = messages("p", "http", [one], [], per)
    [(_, again, _)] = messages("p", "http", [same_instant], [], per)
    assert first == again == "meter:M0:2026-11-29T12:00:00+00:00"
    [(_, vehicle_id, _)] = messages("p", "http", [], vehicles(1), per)
    assert vehicle_id == "vehicle:V0:2026-11-29T12:00:00+00:00"


def test_a_retried_request_has_the_same_ids_and_another_request_others() -> None:
    batch = meters(READINGS_PER_MESSAGE + 10)
    first = [msg_id for _, msg_id, _ in messages("p", "http", batch, [])]
    retry = [msg_id for _, msg_id, _ in messages("p", "http", list(batch), [])]
    other = [msg_id for _, msg_id, _ in messages("p", "http", batch[1:], [])]
    assert first == retry
    assert len(set(first)) == 2
    assert not set(first) & set(other)


def test_a_message_per_reading_is_identified_by_its_reading_wherever_it_is_sent() -> None:
    ids = [
        msg_id
        for _, msg_id, _ in messages("p", "http", meters(3), vehicles(2), QueueMessage.READING)
    ]
    assert ids == [
        "meter:M0:2026-11-29T12:00:00+00:00",
        "meter:M1:2026-11-29T12:00:00+00:00",
        "meter:M2:2026-11-29T12:00:00+00:00",
        "vehicle:V0:2026-11-29T12:00:00+00:00",
        "vehicle:V1:2026-11-29T12:00:00+00:00",
    ]
    elsewhere = messages("p", "mqtt", meters(3)[1:2], [], QueueMessage.READING)
    assert [msg_id for _, msg_id, _ in elsewhere] == [ids[1]]


def test_a_message_without_readings_is_set_apart() -> None:
    received: list[Any] = [
        Message("energy.readings.http", b"not json"),
        Message("x", b"{}"),
        Message("energy.readings.http", b'["x", "M1"]'),
    ]
    batch, good, bad = decode(received, "energy.readings")
    assert (batch.meters, batch.vehicles, good, bad) == ([], [], [], received)

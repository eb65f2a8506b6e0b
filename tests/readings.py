"""Builders for reading payloads and times, shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

_held = False
_minute: datetime | None = None


@contextmanager
def one_minute() -> Iterator[None]:
    """Within this block `minute_ago` counts from the minute it was first called in.

    A test builds readings at whole minutes before now and later compares what the engine
    reports with `minute_ago` again; were the wall-clock minute to turn in between, the two
    would be a minute apart. The conftest holds every test in one block."""
    global _held, _minute
    _held, _minute = True, None
    try:
        yield
    finally:
        _held, _minute = False, None


def minute_ago(minutes: float = 0) -> datetime:
    """Now, floored to the minute, minus `minutes`; inside `one_minute`, "now" is the minute
    of the block's first call."""
    global _minute
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    if _held:
        if _minute is None:
            _minute = now
        now = _minute
    return now - timedelta(minutes=minutes)


def iso(at: datetime) -> str:
    """ISO-8601 with a Z suffix, as devices send it."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def meter(meter_id: str, at: datetime, kwh: float, voltage: float = 230.0) -> dict[str, Any]:
    """A meter reading payload."""
    return {"meterId": meter_id, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": iso(at)}


def vehicle(
    vehicle_id: str, at: datetime, kwh: float, soc: float = 50.0, temp: float = 25.0
) -> dict[str, Any]:
    """A vehicle reading payload."""
    return {
        "vehicleId": vehicle_id,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": iso(at),
    }

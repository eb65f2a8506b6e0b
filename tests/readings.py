"""Builders for reading payloads and times, shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


def minute_ago(minutes: float = 0) -> datetime:
    """Now, floored to the minute, minus `minutes`."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
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

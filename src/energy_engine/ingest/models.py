"""The two reading shapes devices send, validated strictly, and the answer to an ingest."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Tag
from pydantic.alias_generators import to_camel

from energy_engine.bounds import BatteryTemp, DeviceId, Kwh, ReadingTime, Soc, Voltage

__all__ = ["AnyReading", "DeviceId", "IngestResult", "MeterReading", "Queued", "VehicleReading"]

_READING_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    strict=True,  # "42" is not a number, 1 is not a timestamp
    extra="forbid",  # a misspelt field is an error, not a silent default
    allow_inf_nan=False,
    frozen=True,
)


class MeterReading(BaseModel):
    """What a smart meter (grid side, AC) reports every minute."""

    model_config = _READING_CONFIG

    meter_id: DeviceId
    kwh_consumed_ac: Kwh
    voltage: Voltage
    timestamp: ReadingTime


class VehicleReading(BaseModel):
    """What a vehicle (battery side, DC) reports every minute."""

    model_config = _READING_CONFIG

    vehicle_id: DeviceId
    soc: Soc
    kwh_delivered_dc: Kwh
    battery_temp: BatteryTemp
    timestamp: ReadingTime


def _stream_of(item: Any) -> str | None:
    """Tells a meter reading from a vehicle reading by its id field; None when ambiguous."""
    if isinstance(item, dict):
        is_meter, is_vehicle = "meterId" in item, "vehicleId" in item
    else:
        is_meter, is_vehicle = isinstance(item, MeterReading), isinstance(item, VehicleReading)
    if is_meter == is_vehicle:
        return None
    return "meter" if is_meter else "vehicle"


AnyReading = Annotated[
    Annotated[MeterReading, Tag("meter")] | Annotated[VehicleReading, Tag("vehicle")],
    Discriminator(
        _stream_of,
        custom_error_type="stream_unknown",
        custom_error_message="an item needs exactly one of meterId or vehicleId",
    ),
]


class IngestResult(BaseModel):
    """Readings stored by this request, and readings already stored before (retries)."""

    accepted: int
    duplicates: int


class Queued(BaseModel):
    """Queue mode: readings of this request stored in the durable queue, to be written by
    `energy-engine worker` (a retried reading is stored once all the same)."""

    queued: int

"""Live status of one device, answered from the hot store alone."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class VehicleStatus(BaseModel):
    """Latest vehicle reading with what follows from it and the reading before."""

    model_config = _CAMEL

    vehicle_id: str
    soc: float
    kwh_delivered_dc: float
    battery_temp: float
    timestamp: datetime
    received_at: datetime
    power_kw: float | None
    charging: bool
    online: bool
    meter_id: str | None


class VehicleStatuses(BaseModel):
    """The latest state of each requested vehicle ever seen, by id."""

    model_config = _CAMEL

    vehicles: list[VehicleStatus]


class MeterStatus(BaseModel):
    """Latest meter reading with what follows from it and the reading before."""

    model_config = _CAMEL

    meter_id: str
    kwh_consumed_ac: float
    voltage: float
    timestamp: datetime
    received_at: datetime
    power_kw: float | None
    online: bool
    vehicle_id: str | None


class StaleDevice(BaseModel):
    """A device whose newest reading is older than the online limit."""

    model_config = _CAMEL

    kind: str  # "vehicle" or "meter"
    device_id: str
    last_seen: datetime


class FleetStatus(BaseModel):
    """The whole fleet from the hot store: what is known, online and charging right now."""

    model_config = _CAMEL

    at: datetime
    online_since: datetime
    vehicles: int
    vehicles_online: int
    vehicles_charging: int
    avg_soc_online: float | None
    meters: int
    meters_online: int
    stale: list[StaleDevice]
    next_cursor: str | None  # pass as `cursor` for the next page of stale devices

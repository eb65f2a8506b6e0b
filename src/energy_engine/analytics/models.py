"""Charging-efficiency analytics: the report and how its health is judged."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from energy_engine.settings import Settings

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Health(StrEnum):
    """How a vehicle's charging efficiency (DC delivered / AC consumed) looks."""

    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"
    ANOMALY = "anomaly"  # DC above AC: impossible, so bad data or a wrong assignment
    UNKNOWN = "unknown"  # no meter assigned, or no AC readings
    INSUFFICIENT_DATA = "insufficient_data"  # too little AC for the ratio to mean anything


def judge(ac_kwh: float | None, efficiency: float | None, settings: Settings) -> Health:
    """The health class for an AC total and efficiency under the configured thresholds."""
    if ac_kwh is None:
        return Health.UNKNOWN
    if ac_kwh < settings.min_ac_kwh or efficiency is None:
        return Health.INSUFFICIENT_DATA
    if efficiency > 1.0:
        return Health.ANOMALY
    if efficiency >= settings.healthy_efficiency:
        return Health.HEALTHY
    if efficiency >= settings.warning_efficiency:
        return Health.WARNING
    return Health.CRITICAL


class StreamCounts(BaseModel):
    """A count per stream."""

    vehicle: int
    meter: int


class PerformanceReport(BaseModel):
    """AC consumed vs DC delivered for one vehicle over [from, to)."""

    model_config = _CAMEL

    vehicle_id: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    ac_consumed_kwh: float | None = Field(description="null when no meter data covers the window")
    dc_delivered_kwh: float
    loss_kwh: float | None
    efficiency: float | None = Field(description="DC / AC as a fraction")
    avg_battery_temp: float | None
    readings: StreamCounts
    meter_ids: list[str]
    health: Health
    skipped_intervals: StreamCounts = Field(
        description="increments left out because they would need more than the maximum power"
    )

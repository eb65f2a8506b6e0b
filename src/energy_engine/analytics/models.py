"""Charging-efficiency analytics: the report and how its health is judged."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

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


def _history_from() -> Any:
    return Field(
        description="raw history is kept from this time on (ENERGY_HISTORY_RETENTION); "
        "null when it is kept forever"
    )


def _partial() -> Any:
    return Field(
        description="true when the answer needs data that retention dropped, so the figures "
        "cover only what is kept: raw readings before historyFrom (the parts of the window's "
        "first and last hour off the hour; whole UTC hours come from rollups) or rollups "
        "older than ENERGY_ROLLUP_RETENTION"
    )


class StreamCounts(BaseModel):
    """A count per stream."""

    vehicle: int
    meter: int


class VehicleSummary(BaseModel):
    """AC consumed vs DC delivered for one vehicle over a window."""

    model_config = _CAMEL

    vehicle_id: str
    ac_consumed_kwh: float | None = Field(
        description="null when no assigned meter reported in the window"
    )
    dc_delivered_kwh: float | None = Field(
        description="null when the vehicle did not report in the window"
    )
    loss_kwh: float | None
    efficiency: float | None = Field(description="DC / AC as a fraction")
    avg_battery_temp: float | None
    readings: StreamCounts
    meter_ids: list[str]
    health: Health
    skipped_intervals: StreamCounts = Field(
        description="increments left out because they would need more than the maximum power"
    )


class PerformanceReport(VehicleSummary):
    """AC consumed vs DC delivered for one vehicle over [from, to)."""

    from_: datetime = Field(serialization_alias="from")
    to: datetime
    history_from: datetime | None = _history_from()
    partial: bool = _partial()


class Step(StrEnum):
    """A series' step: one UTC hour or one UTC day."""

    HOUR = "1h"
    DAY = "1d"


class SeriesPoint(BaseModel):
    """One step of a vehicle's series: [from, to), cut to the requested window."""

    model_config = _CAMEL

    from_: datetime = Field(serialization_alias="from")
    to: datetime
    ac_consumed_kwh: float | None = Field(
        description="null when no assigned meter reported in the step"
    )
    dc_delivered_kwh: float | None = Field(description="null when the vehicle did not report")
    loss_kwh: float | None
    efficiency: float | None
    avg_battery_temp: float | None
    soc_min: float | None
    soc_max: float | None
    readings: StreamCounts


class PerformanceSeries(BaseModel):
    """A vehicle's window in steps, for a chart."""

    model_config = _CAMEL

    vehicle_id: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    step: Step
    history_from: datetime | None = _history_from()
    partial: bool = _partial()
    points: list[SeriesPoint]


class FleetSort(StrEnum):
    """What the fleet ranking is ordered by."""

    EFFICIENCY = "efficiency"
    LOSS_KWH = "lossKwh"
    DC_DELIVERED_KWH = "dcDeliveredKwh"


class Order(StrEnum):
    """Ascending or descending; vehicles without a value come last either way."""

    ASC = "asc"
    DESC = "desc"


class FleetTotals(BaseModel):
    """The whole fleet over the window, whatever the page and the health filter."""

    model_config = _CAMEL

    vehicles: int
    ac_consumed_kwh: float = Field(description="over the vehicles with AC data")
    dc_delivered_kwh: float = Field(description="over all vehicles")
    loss_kwh: float = Field(description="AC minus DC over the vehicles with AC data")
    efficiency: float | None = Field(description="DC / AC over the vehicles with AC data")
    health: dict[Health, int] = Field(description="vehicles per health class")


class FleetReport(BaseModel):
    """Every vehicle's summary over [from, to), filtered, sorted and paginated, plus totals."""

    model_config = _CAMEL

    from_: datetime = Field(serialization_alias="from")
    to: datetime
    history_from: datetime | None = _history_from()
    partial: bool = _partial()
    sort: FleetSort
    order: Order
    health: list[Health] = Field(description="the health filter; empty for all vehicles")
    totals: FleetTotals
    matching: int = Field(description="vehicles passing the health filter")
    vehicles: list[VehicleSummary]
    next_cursor: str | None

"""A vehicle's report numbers from its stored sums: the energy rule, rounding and health."""

from __future__ import annotations

from typing import NamedTuple

from energy_engine.analytics.models import Health, StreamCounts, VehicleSummary, judge
from energy_engine.analytics.store import Performance
from energy_engine.settings import Settings


def rounded(value: float | None, digits: int) -> float | None:
    """`value` rounded to `digits`, None kept."""
    return None if value is None else round(value, digits)


class Figures(NamedTuple):
    """A vehicle's rounded report numbers and health. A named tuple, the cheapest record to
    build: a fleet page makes one per vehicle shown, up to 1,000 a request."""

    vehicle_id: str
    found: Performance
    ac_kwh: float | None
    dc_kwh: float | None
    loss_kwh: float | None
    efficiency: float | None
    health: Health


# One rule for both sides: a side's energy is known (a number, 0.0 when nothing flowed) only
# where that side reported in the window; otherwise it is null, and so is everything made
# from it. AC comes from the meters assigned to the vehicle, DC from the vehicle itself.
def known(kwh: float, readings: int) -> float | None:
    """A side's energy: its kWh where it reported in the window, else None."""
    return kwh if readings else None


def ac_kwh(found: Performance) -> float | None:
    """AC consumed by the vehicle's meters, None when none of them reported."""
    return known(found.meter_kwh, found.meter_readings)


def dc_kwh(found: Performance) -> float | None:
    """DC delivered to the vehicle, None when it did not report."""
    return known(found.dc.kwh, found.dc.readings)


# The report's rounded figures from AC and DC (None: unknown); the fleet ranks on these.
def rounded_efficiency(ac: float | None, dc: float | None) -> float | None:
    """DC / AC as the report shows it."""
    return round(dc / ac, 4) if ac and dc is not None else None


def rounded_loss(ac: float | None, dc: float | None) -> float | None:
    """AC - DC as the report shows it."""
    return None if ac is None or dc is None else round(ac - dc, 6)


def rounded_dc(ac: float | None, dc: float | None) -> float | None:
    """DC as the report shows it (`ac` unused: every sort value takes both sides)."""
    return None if dc is None else round(dc, 6)


def health(ac: float | None, dc: float | None, settings: Settings) -> Health:
    """The health class, judged on the unrounded efficiency."""
    return judge(ac, dc / ac if ac and dc is not None else None, settings)


def figures(vehicle_id: str, found: Performance, settings: Settings) -> Figures:
    """The report's numbers for one vehicle's window, rounded, with its health class."""
    dc = dc_kwh(found)
    ac = ac_kwh(found)
    return Figures(
        vehicle_id,
        found,
        rounded(ac, 6),
        rounded_dc(ac, dc),
        rounded_loss(ac, dc),
        rounded_efficiency(ac, dc),
        health(ac, dc, settings),
    )


def summarize(f: Figures) -> VehicleSummary:
    """The report body for one vehicle."""
    dc = f.found.dc
    return VehicleSummary(
        vehicle_id=f.vehicle_id,
        ac_consumed_kwh=f.ac_kwh,
        dc_delivered_kwh=f.dc_kwh,
        loss_kwh=f.loss_kwh,
        efficiency=f.efficiency,
        avg_battery_temp=rounded(dc.avg_battery_temp, 2),
        readings=StreamCounts(vehicle=dc.readings, meter=f.found.meter_readings),
        meter_ids=list(dict.fromkeys(f.found.meter_ids)),
        health=f.health,
        skipped_intervals=StreamCounts(vehicle=dc.skipped, meter=f.found.meter_skipped),
    )

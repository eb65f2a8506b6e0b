"""Ground truth for the analytics: the report worked out by brute force from raw rows.

Written from the rules as documented (README, `energy_engine.energy`'s docstring), not from the
engine's code: no engine SQL function, no engine energy function, no rollup. The history tables
are read with plain SELECTs; everything else is a loop over a handful of readings, so every
figure here is one the engine's answers can be checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from energy_engine.settings import EnergySemantics, Settings


@dataclass(frozen=True, slots=True)
class Window:
    """One device's energy over a window, brute force."""

    readings: int
    kwh: float
    skipped: int
    temps: tuple[float, ...] = ()  # battery temperatures of the readings inside (vehicles)


@dataclass(frozen=True, slots=True)
class Rules:
    """The energy rules a report is computed under."""

    interval: bool
    max_power_kw: float
    lookback: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            settings.energy_semantics is EnergySemantics.INTERVAL,
            settings.max_power_kw,
            settings.baseline_lookback,
        )


def window(
    points: Iterable[tuple[datetime, float] | tuple[datetime, float, float]],
    start: datetime,
    end: datetime,
    rules: Rules,
) -> Window:
    """Energy of [start, end) from (time, register[, battery temp]) points in arrival order.

    The first arrival at a time is the reading. A reading's increment is measured from the
    latest reading before it, if that one is no older than `start - lookback`: the register's
    rise, or after a fall (a counter reset) the new value; under interval semantics the value
    itself. An increment that needs more than the maximum power over its interval is skipped.
    """
    first: dict[datetime, tuple[float, float | None]] = {}
    for point in points:
        if point[0] not in first:
            first[point[0]] = (point[1], point[2] if len(point) > 2 else None)
    readings = skipped = 0
    kwh = 0.0
    temps: list[float] = []
    for at, (value, temp) in first.items():
        if not start <= at < end:
            continue
        readings += 1
        if temp is not None:
            temps.append(temp)
        earlier = [t for t in first if start - rules.lookback <= t < at]
        prev = max(earlier) if earlier else None
        if rules.interval:
            added = value
        elif prev is None:
            continue  # no baseline: nothing to measure from
        else:
            before = first[prev][0]
            added = value - before if value >= before else value
        allowed = (
            None if prev is None else rules.max_power_kw * (at - prev).total_seconds() / 3600.0
        )
        if allowed is not None and abs(added) > allowed:
            skipped += 1
        else:
            kwh += added
    return Window(readings, kwh, skipped, tuple(temps))


def health(ac: float | None, efficiency: float | None, settings: Settings) -> str:
    """The health class, as the README states the thresholds."""
    if ac is None:
        return "unknown"
    if ac < settings.min_ac_kwh or efficiency is None:
        return "insufficient_data"
    if efficiency > 1.0:
        return "anomaly"
    if efficiency >= settings.healthy_efficiency:
        return "healthy"
    if efficiency >= settings.warning_efficiency:
        return "warning"
    return "critical"


def _near(value: float | None, digits: int) -> Any:
    """`value` as the API shows it, rounded to `digits`: equal within the rounding."""
    return None if value is None else pytest.approx(value, rel=1e-9, abs=0.6 * 10**-digits)


@dataclass(frozen=True, slots=True)
class Report:
    """A vehicle's report figures, unrounded."""

    vehicle_id: str
    dc: Window
    meters: tuple[tuple[str, Window], ...]  # each assigned meter's part of the window, in order

    @property
    def meter_readings(self) -> int:
        return sum(w.readings for _, w in self.meters)

    @property
    def ac_kwh(self) -> float | None:
        return sum(w.kwh for _, w in self.meters) if self.meter_readings else None

    @property
    def dc_kwh(self) -> float | None:
        return self.dc.kwh if self.dc.readings else None

    @property
    def efficiency(self) -> float | None:
        ac, dc = self.ac_kwh, self.dc_kwh
        return dc / ac if ac and dc is not None else None

    def body(self, settings: Settings) -> dict[str, Any]:
        """The JSON body GET /v1/analytics/performance/{id} should answer (without from/to)."""
        ac, dc = self.ac_kwh, self.dc_kwh
        temps = self.dc.temps
        return {
            "vehicleId": self.vehicle_id,
            "acConsumedKwh": _near(ac, 6),
            "dcDeliveredKwh": _near(dc, 6),
            "lossKwh": None if ac is None or dc is None else _near(ac - dc, 6),
            "efficiency": _near(self.efficiency, 4),
            "avgBatteryTemp": _near(sum(temps) / len(temps), 2) if temps else None,
            "readings": {"vehicle": self.dc.readings, "meter": self.meter_readings},
            "meterIds": list(dict.fromkeys(m for m, _ in self.meters)),
            "health": health(ac, self.efficiency, settings),
            "skippedIntervals": {
                "vehicle": self.dc.skipped,
                "meter": sum(w.skipped for _, w in self.meters),
            },
        }


def segments(
    assigned: Iterable[tuple[str, datetime, datetime | None]], start: datetime, end: datetime
) -> list[tuple[str, datetime, datetime]]:
    """The part of [start, end) each (meter, valid from, valid to) covers, in window order."""
    parts = []
    for meter_id, valid_from, valid_to in sorted(assigned, key=lambda a: a[1]):
        seg_from = max(valid_from, start)
        seg_to = end if valid_to is None else min(valid_to, end)
        if seg_from < seg_to:
            parts.append((meter_id, seg_from, seg_to))
    return parts


def report(
    vehicle_id: str,
    vehicle_points: Sequence[tuple[datetime, float, float]],
    assigned: Iterable[tuple[str, datetime, datetime | None]],
    meter_points: dict[str, Sequence[tuple[datetime, float]]],
    start: datetime,
    end: datetime,
    rules: Rules,
) -> Report:
    """The report of [start, end) from the readings themselves, each list in arrival order."""
    return Report(
        vehicle_id,
        window(vehicle_points, start, end, rules),
        tuple(
            (meter_id, window(meter_points.get(meter_id, ()), seg_from, seg_to, rules))
            for meter_id, seg_from, seg_to in segments(assigned, start, end)
        ),
    )


async def stored_report(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime, settings: Settings
) -> Report | None:
    """The report of [start, end) from the rows stored in the history and assignment tables;
    None when the vehicle never reported and was never assigned."""
    vehicle_rows = await conn.fetch(
        "SELECT read_at, kwh_delivered_dc, battery_temp FROM vehicle_readings"
        " WHERE vehicle_id = $1 ORDER BY read_at",
        vehicle_id,
    )
    assigned = [
        tuple(r)
        for r in await conn.fetch(
            "SELECT meter_id, valid_from, valid_to FROM assignments WHERE vehicle_id = $1",
            vehicle_id,
        )
    ]
    if not vehicle_rows and not assigned:
        return None
    meter_points: dict[str, list[tuple[datetime, float]]] = {}
    for meter_id, *_ in assigned:
        rows = await conn.fetch(
            "SELECT read_at, kwh_consumed_ac FROM meter_readings WHERE meter_id = $1",
            meter_id,
        )
        meter_points[meter_id] = [(r[0], r[1]) for r in rows]
    return report(
        vehicle_id,
        [(r[0], r[1], r[2]) for r in vehicle_rows],
        assigned,
        meter_points,  # type: ignore[arg-type]
        start,
        end,
        Rules.of(settings),
    )


async def stored_body(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime, settings: Settings
) -> dict[str, Any]:
    """`stored_report`'s JSON body as the per-vehicle report answers it; the vehicle must be
    known, and no history retention is set (the whole window is kept)."""
    found = await stored_report(conn, vehicle_id, start, end, settings)
    assert found is not None, vehicle_id
    assert settings.history_retention is None
    return {**found.body(settings), "historyFrom": None, "partial": False}


def totals(reports: Sequence[Report], settings: Settings) -> dict[str, Any]:
    """The fleet's totals: all AC and DC, and loss and efficiency of the vehicles with AC."""
    with_ac = [r for r in reports if r.ac_kwh is not None]
    ac = sum(r.ac_kwh or 0.0 for r in with_ac)
    dc_with_ac = sum(r.dc_kwh or 0.0 for r in with_ac)
    classes = dict.fromkeys(
        ["healthy", "warning", "critical", "anomaly", "unknown", "insufficient_data"], 0
    )
    for r in reports:
        classes[health(r.ac_kwh, r.efficiency, settings)] += 1
    return {
        "vehicles": len(reports),
        "acConsumedKwh": _near(ac, 6),
        "dcDeliveredKwh": _near(sum(r.dc_kwh or 0.0 for r in reports), 6),
        "lossKwh": _near(ac - dc_with_ac, 6),
        "efficiency": _near(dc_with_ac / ac, 4) if ac else None,
        "health": classes,
    }

"""Energy arithmetic on register readings: increments, plausibility and window sums.

Pure functions, no I/O. The analytics SQL implements the same rules inside PostgreSQL; the test
suite checks the two against each other and this module against a brute-force reference.

Rules (cumulative semantics, the default):
- the increment of a reading is its value minus the previous reading's value; a decrease is a
  counter reset, and the increment is then the new value;
- an increment that needs more than `max_power_kw` over its interval (either way) is physically
  impossible: it is skipped, and counted as skipped (so is one that is NaN or infinite);
- the energy of a window [start, end) is the sum of the increments of the readings inside it,
  the last reading before `start` (at most `baseline_lookback` earlier) serving as baseline.

Interval semantics: each reading already is the energy since the previous one, so its increment
is its value; the plausibility check uses the time since the previous reading when there is one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from energy_engine.settings import EnergySemantics


@dataclass(frozen=True, slots=True)
class Reading:
    """One register reading of one device."""

    at: datetime
    kwh: float


@dataclass(frozen=True, slots=True)
class WindowEnergy:
    """Energy counted in a window, and what was left out of it."""

    kwh: float
    readings: int  # readings inside the window
    skipped: int  # increments left out as physically impossible


def increment(prev_kwh: float | None, kwh: float, semantics: EnergySemantics) -> float | None:
    """Energy a reading adds after `prev_kwh`; None when there is no baseline to measure from."""
    if semantics is EnergySemantics.INTERVAL:
        return kwh
    if prev_kwh is None:
        return None
    return kwh - prev_kwh if kwh >= prev_kwh else kwh


def is_plausible(increment_kwh: float, interval: timedelta | None, max_power_kw: float) -> bool:
    """False when `increment_kwh` within `interval` needs more than the maximum power, either
    way (a huge negative "reset" is as impossible as a huge jump), or is NaN."""
    if interval is None:
        return True
    # The allowed energy is divided out rather than the increment multiplied, the same way the
    # SQL compares (energy_plausible in migrations/0001_baseline.sql): `increment * 3600`
    # overflows for a poison reading such as 1e308.
    return abs(increment_kwh) <= max_power_kw * interval.total_seconds() / 3600.0


def power_kw(
    prev: Reading | None, latest: Reading, semantics: EnergySemantics, max_power_kw: float
) -> float | None:
    """Average power between two consecutive readings; None when unknown or implausible."""
    if prev is None or latest.at <= prev.at:
        return None
    added = increment(prev.kwh, latest.kwh, semantics)
    interval = latest.at - prev.at
    if added is None or not is_plausible(added, interval, max_power_kw):
        return None
    return added / (interval.total_seconds() / 3600.0)


def first_write_wins(readings: Iterable[Reading]) -> list[Reading]:
    """Readings in time order, keeping the first one received for each timestamp."""
    seen: dict[datetime, Reading] = {}
    for reading in readings:
        seen.setdefault(reading.at, reading)
    return sorted(seen.values(), key=lambda r: r.at)


def window_energy(
    readings: Iterable[Reading],
    start: datetime,
    end: datetime,
    *,
    semantics: EnergySemantics,
    max_power_kw: float,
    baseline_lookback: timedelta,
) -> WindowEnergy:
    """Energy of the window [start, end) from readings given in arrival order."""
    ordered = first_write_wins(r for r in readings if r.at >= start - baseline_lookback)
    total = 0.0
    inside = 0
    skipped = 0
    prev: Reading | None = None
    for reading in ordered:
        if reading.at >= end:
            break
        if reading.at >= start:
            inside += 1
            added = increment(prev.kwh if prev else None, reading.kwh, semantics)
            if added is not None:
                if is_plausible(added, reading.at - prev.at if prev else None, max_power_kw):
                    total += added
                else:
                    skipped += 1
        prev = reading
    return WindowEnergy(kwh=total, readings=inside, skipped=skipped)

"""The energy rules, checked against a brute-force reference on random streams."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energy_engine.energy import (
    Reading,
    WindowEnergy,
    first_write_wins,
    increment,
    is_plausible,
    power_kw,
    window_energy,
)
from energy_engine.settings import EnergySemantics

T0 = datetime(2026, 11, 1, tzinfo=UTC)
CUMULATIVE, INTERVAL = EnergySemantics.CUMULATIVE, EnergySemantics.INTERVAL


def brute_force(
    arrivals: list[Reading],
    start: datetime,
    end: datetime,
    semantics: EnergySemantics,
    max_power_kw: float,
    lookback: timedelta,
) -> WindowEnergy:
    """The definition, spelt out with no cleverness: quadratic, order-free."""
    stored = [
        r for i, r in enumerate(arrivals) if all(a.at != r.at for a in arrivals[:i])
    ]  # first write wins
    total, inside, skipped = 0.0, 0, 0
    for r in stored:
        if not start <= r.at < end:
            continue
        inside += 1
        earlier = [p for p in stored if start - lookback <= p.at < r.at]
        prev = max(earlier, key=lambda p: p.at) if earlier else None
        if semantics is INTERVAL:
            added: float | None = r.kwh
        elif prev is None:
            added = None
        elif r.kwh < prev.kwh:
            added = r.kwh  # reset
        else:
            added = r.kwh - prev.kwh
        if added is None:
            continue
        allowed = max_power_kw * (r.at - prev.at).total_seconds() / 3600 if prev else None
        if allowed is not None and abs(added) > allowed:
            skipped += 1
        else:
            total += added
    return WindowEnergy(kwh=total, readings=inside, skipped=skipped)


readings = st.lists(
    st.builds(
        Reading,
        at=st.integers(0, 600).map(lambda m: T0 + timedelta(minutes=m)),
        kwh=st.one_of(
            st.floats(0, 10_000, allow_nan=False, allow_infinity=False),
            st.integers(0, 50).map(float),  # small registers: equal values and resets
        ),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(
    arrivals=readings,
    start_minute=st.integers(-30, 600),
    length=st.integers(1, 700),
    semantics=st.sampled_from(EnergySemantics),
    max_power_kw=st.sampled_from([0.5, 60.0, 500.0, 1e9]),
    lookback_minutes=st.sampled_from([0, 10, 10_000]),
)
def test_window_energy_matches_brute_force(
    arrivals: list[Reading],
    start_minute: int,
    length: int,
    semantics: EnergySemantics,
    max_power_kw: float,
    lookback_minutes: int,
) -> None:
    start = T0 + timedelta(minutes=start_minute)
    end = start + timedelta(minutes=length)
    lookback = timedelta(minutes=lookback_minutes)
    got = window_energy(
        arrivals,
        start,
        end,
        semantics=semantics,
        max_power_kw=max_power_kw,
        baseline_lookback=lookback,
    )
    want = brute_force(arrivals, start, end, semantics, max_power_kw, lookback)
    assert (got.readings, got.skipped) == (want.readings, want.skipped)
    assert got.kwh == pytest.approx(want.kwh, rel=1e-9, abs=1e-9)


@given(arrivals=readings, data=st.data())
def test_arrival_order_only_matters_for_duplicates(
    arrivals: list[Reading], data: st.DataObject
) -> None:
    deduplicated = first_write_wins(arrivals)
    shuffled = data.draw(st.permutations(deduplicated))
    kwargs = {
        "semantics": CUMULATIVE,
        "max_power_kw": 500.0,
        "baseline_lookback": timedelta(days=1),
    }
    end = T0 + timedelta(hours=11)
    assert window_energy(shuffled, T0, end, **kwargs) == window_energy(arrivals, T0, end, **kwargs)  # type: ignore[arg-type]


def test_increment_rules() -> None:
    assert increment(None, 5.0, CUMULATIVE) is None
    assert increment(3.0, 5.0, CUMULATIVE) == 2.0
    assert increment(5.0, 5.0, CUMULATIVE) == 0.0
    assert increment(5.0, 1.5, CUMULATIVE) == 1.5  # reset
    assert increment(None, 1.5, INTERVAL) == 1.5
    assert increment(9.0, 1.5, INTERVAL) == 1.5


def test_plausibility_boundary_is_inclusive() -> None:
    three_minutes = timedelta(minutes=3)
    assert is_plausible(25.0, three_minutes, 500)  # exactly 500 kW
    assert not is_plausible(25.001, three_minutes, 500)
    assert is_plausible(1e12, None, 500)


# A poison value after 1.0, 2.0 and before 3.0, a minute apart: the counted kWh and skipped
# increments. Into a huge value, or out of a huge negative one, the step is skipped; 3.0 after
# a huge (or NaN) value is a counter reset, counted.
@pytest.mark.parametrize(
    ("poison", "kwh", "skipped"),
    [
        (1e308, 4.0, 1),
        (-1e308, 1.0, 2),
        (float("inf"), 4.0, 1),
        (float("-inf"), 1.0, 2),
        (float("nan"), 4.0, 1),
    ],
)
def test_absurd_increments_are_skipped_either_way(poison: float, kwh: float, skipped: int) -> None:
    minute = timedelta(minutes=1)
    assert not is_plausible(poison, minute, 500)
    assert is_plausible(-8.0, minute, 500)  # a reset to a small negative register: as before
    assert not is_plausible(-9.0, minute, 500)  # needs more than 500 kW the other way
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    readings = [Reading(t0 + i * minute, v) for i, v in enumerate([1.0, 2.0, poison, 3.0])]
    found = window_energy(
        readings,
        t0,
        t0 + 4 * minute,
        semantics=CUMULATIVE,
        max_power_kw=500,
        baseline_lookback=timedelta(days=1),
    )
    assert found == WindowEnergy(kwh=kwh, readings=4, skipped=skipped)


def test_power() -> None:
    prev = Reading(T0, 10.0)
    assert power_kw(prev, Reading(T0 + timedelta(minutes=30), 15.0), CUMULATIVE, 500) == 10.0
    assert power_kw(None, Reading(T0, 15.0), CUMULATIVE, 500) is None
    assert power_kw(prev, Reading(T0 + timedelta(minutes=1), 5000.0), CUMULATIVE, 500) is None
    assert power_kw(prev, Reading(T0 + timedelta(minutes=6), 1.0), INTERVAL, 500) == 10.0


def test_first_write_wins_keeps_the_first_arrival() -> None:
    stream = [Reading(T0, 1.0), Reading(T0 + timedelta(minutes=1), 2.0), Reading(T0, 9.0)]
    assert first_write_wins(stream) == [stream[0], stream[1]]

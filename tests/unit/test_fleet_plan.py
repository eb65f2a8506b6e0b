"""Which parts of a fleet window come from rollups, marks and raw rows (analytics.fleet.plan)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from energy_engine.analytics.fleet import Plan, plan

H = timedelta(hours=1)
DAY = datetime(2026, 3, 2, tzinfo=UTC)
WEEK = timedelta(days=7)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def test_a_whole_hour_window_needs_no_marks() -> None:
    assert plan(at(0), at(24), at(30), None, WEEK) == Plan(at(0), at(24), at(0), False, False)


def test_a_day_from_half_past_takes_both_edges_from_marks() -> None:
    assert plan(at(0.5), at(24.5), at(30), None, WEEK) == Plan(at(1), at(24), at(1), True, True)


def test_edges_not_rolled_up_yet_are_raw() -> None:
    # The last hour is still being written: raw rows from the last rolled hour on.
    assert plan(at(0.5), at(24.5), at(24), None, WEEK) == Plan(at(1), at(24), at(1), True, False)
    assert plan(at(0.5), at(24.5), None, None, WEEK) == Plan(at(1), at(1), at(1), False, False)
    # The first hour is rolled only up to its start.
    assert not plan(at(0.5), at(24.5), at(0), None, WEEK).marked_start


def test_rollups_older_than_the_marks_are_split_by_raw_rows() -> None:
    parts = plan(at(0.5), at(24.5), at(30), at(10), WEEK)
    assert (parts.marked_start, parts.marked_end) == (False, True)


def test_a_lookback_under_an_hour_keeps_the_first_edge_raw() -> None:
    # The reading before the cut may be older than the lookback: only a lookup can tell.
    parts = plan(at(0.5), at(24.5), at(30), None, timedelta(minutes=59))
    assert (parts.marked_start, parts.marked_end) == (False, True)


def test_cuts_off_the_millisecond_grid_are_raw() -> None:
    odd = timedelta(microseconds=1)
    parts = plan(at(0.5) + odd, at(24.5) + odd, at(30), None, WEEK)
    assert (parts.marked_start, parts.marked_end) == (False, False)


def test_a_window_inside_one_hour_is_raw_or_one_head() -> None:
    assert plan(at(3.25), at(3.75), at(30), None, WEEK) == Plan(
        at(4), at(4), at(3.75), False, False
    )
    # From the hour's start: the head of its rollup.
    assert plan(at(3), at(3.5), at(30), None, WEEK) == Plan(at(3), at(3), at(3), False, True)

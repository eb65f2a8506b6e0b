"""Which windows need data retention dropped: raw rows off the hour at a window's edges, before
historyFrom, or rollups past their own retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from energy_engine.analytics.query import coverage
from energy_engine.settings import Settings

# History kept 30 days, rollups 60: far enough from now that the test's own clock does not
# matter at the scale of the hours below.
KEEP = Settings(
    _env_file=None, history_retention=timedelta(days=30), rollup_retention=timedelta(days=60)
)
H = timedelta(hours=1)


def _hour(days_ago: float) -> datetime:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    return at.replace(minute=0, second=0, microsecond=0)


@pytest.mark.parametrize(
    ("start", "end", "partial"),
    [
        (_hour(2), _hour(1), False),  # inside history
        (_hour(40), _hour(39), False),  # whole hours from rollups
        (_hour(40) + H / 2, _hour(39), True),  # its first half hour was raw, and dropped
        (_hour(40), _hour(39) + H / 2, True),  # its last half hour likewise
        (_hour(40), _hour(20) + H / 2, False),  # the raw tail is inside history
        (_hour(40) + H / 4, _hour(40) + H / 2, True),  # no whole hour at all
        (_hour(70), _hour(50), True),  # rollups past their retention
        (_hour(31) + H / 2, _hour(20), True),  # a raw head just past history
    ],
)
def test_partial_is_true_exactly_when_dropped_data_is_needed(
    start: datetime, end: datetime, partial: bool
) -> None:
    history_from, flagged = coverage(start, end, KEEP)
    assert history_from is not None
    assert flagged is partial


def test_an_offset_is_read_as_the_utc_hour_it_names() -> None:
    # 05:30 at +05:30 is midnight UTC: a whole hour, answered from rollups.
    start = _hour(40).replace(hour=0).astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert coverage(start, start + 3 * H, KEEP)[1] is False


def test_without_retention_nothing_is_partial() -> None:
    assert coverage(_hour(400), _hour(399), Settings(_env_file=None)) == (None, False)

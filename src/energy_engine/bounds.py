"""What the engine accepts from outside: device ids, times and physical ranges, in one place.

Every edge (ingest bodies, path and query parameters, assignment bodies, imported files) takes
its rules from here, so a value refused on one route is refused on all of them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    StringConstraints,
    TypeAdapter,
)

DEVICE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
DEVICE_ID_RULE = "1 to 64 of A-Z a-z 0-9 . _ : -"
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
DEVICE_ID = re.compile(DEVICE_ID_PATTERN)  # for ids outside a model (paths, cursors)

# A cumulative register of 1 TWh is far past any meter or battery; above it a value is a fault
# (or an attack: 1e308 overflowed the engine's sums).
MAX_KWH = 1e9
Kwh = Annotated[float, Field(ge=0, le=MAX_KWH, description=f"kWh, 0 to {MAX_KWH:.0e}")]
Voltage = Annotated[float, Field(ge=0, le=1000, description="volts, 0 to 1000")]
Soc = Annotated[float, Field(ge=0, le=100, description="state of charge in %, 0 to 100")]
BatteryTemp = Annotated[float, Field(ge=-40, le=100, description="°C, -40 to 100")]

# No device of this fleet reported before 2000, and no question about the future reaches past
# 2100; both bounds keep every date computation far from year 1 and 9999.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
TIME_RULE = "ISO 8601 with a UTC offset, e.g. 2026-11-22T08:00:00Z"
_RANGE_RULE = f"between {EARLIEST:%Y-%m-%dT%H:%M:%SZ} and {LATEST:%Y-%m-%dT%H:%M:%SZ}"

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_FRACTION_TOO_FINE = re.compile(r"[.,]\d{7}")
# "…T08:00:00 01:00": a `+` sent unencoded in a query string arrives as a space.
_PLUS_AS_SPACE = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)? \d{2}(?::?\d{2})?$")


def _iso_text(value: Any) -> Any:
    """Only ISO-8601 text is a time: no epoch numbers, no finer than microseconds."""
    if not isinstance(value, str):
        if isinstance(value, datetime):
            return value
        raise ValueError(TIME_RULE)
    if _PLUS_AS_SPACE.search(value):
        raise ValueError("a '+' in a query string must be sent as %2B (or use Z for UTC)")
    if not _ISO.match(value):
        raise ValueError(TIME_RULE)
    if _FRACTION_TOO_FINE.search(value):
        raise ValueError("at most microsecond precision (6 fractional digits)")
    return value


def _in_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("add a UTC offset such as Z or +01:00")
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"must lie {_RANGE_RULE}")
    return value


# A time given as a query parameter or in a request body (not a reading's own timestamp).
When = Annotated[
    datetime,
    BeforeValidator(_iso_text),
    AfterValidator(_in_range),
    Field(description=f"{TIME_RULE}, {_RANGE_RULE}"),
]


# `When` for text outside a model (the lean report handler, cursors); ValidationError is a
# ValueError.
WHEN: TypeAdapter[datetime] = TypeAdapter(When)


def _reading_time_text(value: Any) -> Any:
    if isinstance(value, datetime):  # built in Python (tests, the simulator)
        return value
    if not isinstance(value, str):
        raise ValueError(TIME_RULE)
    if _FRACTION_TOO_FINE.search(value):
        raise ValueError("at most microsecond precision (6 fractional digits)")
    return value


# A reading's own time. Not strict: strict mode takes no text after a validator has seen it;
# the validator refuses everything but ISO text (and datetimes built in Python) instead.
ReadingTime = Annotated[
    AwareDatetime,
    BeforeValidator(_reading_time_text),
    Field(
        strict=False,
        description=f"{TIME_RULE}, at most microsecond precision; not older than "
        "ENERGY_MAX_READING_AGE (30 days) nor more than ENERGY_MAX_FUTURE_SKEW (5 minutes) ahead",
    ),
]


def repeated_keys(text: str | bytes | bytearray) -> list[tuple[int, str]]:
    """(object number, key) for every key repeated within one JSON object of `text`, objects
    numbered in the order they close (for flat objects: their order in the text). Validation
    would silently keep the last of two equal keys."""
    found: list[tuple[int, str]] = []
    position = 0

    def note(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal position
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                found.append((position, key))
            seen.add(key)
        position += 1
        return dict(pairs)

    json.loads(text, object_pairs_hook=note)
    return found


def duration_text(span: timedelta) -> str:
    """`span` as people write it: "30 days", "5 minutes", "1 day 6 hours"."""
    seconds = int(span.total_seconds())
    parts = []
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return " ".join(parts) or "0 seconds"

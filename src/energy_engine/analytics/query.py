"""What an analytics request asks for: its window, and a fleet page's filter, order and cursor."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from energy_engine.analytics.models import FleetSort, Health, Order
from energy_engine.bounds import WHEN, duration_text
from energy_engine.errors import invalid_request
from energy_engine.settings import Settings


def resolve_window(
    start: datetime | None, end: datetime | None, settings: Settings
) -> tuple[datetime, datetime]:
    """[from, to) from the query: `to` defaults to now, `from` to one default window before.
    Each given time is already within `bounds.When`'s range."""
    end = end or datetime.now(UTC)
    start = start or end - settings.default_window
    if start >= end:
        raise invalid_request("from", "not before to", "from must be before to")
    if end - start > settings.max_window:
        raise invalid_request(
            "from",
            "window too long",
            f"the window may span at most {duration_text(settings.max_window)}",
        )
    return start, end


def coverage(start: datetime, end: datetime, settings: Settings) -> tuple[datetime | None, bool]:
    """`historyFrom` and `partial` of a report over [start, end): since when raw history is kept
    (None without a retention period), and whether the answer needs data retention dropped.
    Settings and the clock only: nothing is asked of the database on the report's path."""
    if settings.history_retention is None:
        return None, False
    now = datetime.now(UTC)
    history_from = now - settings.history_retention
    if start >= history_from:
        return history_from, False
    rollups_from = None if settings.rollup_retention is None else now - settings.rollup_retention
    return history_from, _needs_dropped(start, end, history_from, rollups_from)


def _needs_dropped(
    start: datetime, end: datetime, history_from: datetime, rollups_from: datetime | None
) -> bool:
    """Whether [start, end) needs raw rows before `history_from` or rollups before
    `rollups_from`. Whole UTC hours of a window are answered from hour and day rollups alone
    (the increment into an hour's first reading is stored with it), exactly as from raw rows;
    only the parts of its first and last hour off the hour are read raw. Past retention no
    reading can arrive late (retention is at least max_reading_age), so no hour there is dirty."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first_whole = _floor_hour(start)
    if first_whole < start:
        first_whole += timedelta(hours=1)
    last_whole = _floor_hour(end)
    if first_whole >= last_whole:  # no whole hour: every reading is read raw
        return start < history_from
    if start < first_whole and start < history_from:
        return True
    if last_whole < end and last_whole < history_from:
        return True
    return rollups_from is not None and first_whole < rollups_from


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class FleetQuery:
    """What a fleet page is cut from; a cursor carries it to the next page."""

    start: datetime
    end: datetime
    sort: FleetSort
    order: Order
    health: tuple[Health, ...]


def health_filter(values: list[str] | None) -> tuple[Health, ...]:
    """`health=critical,warning` or `health=critical&health=warning`."""
    wanted: list[Health] = []
    for part in ",".join(values or []).split(","):
        if not part.strip():
            continue
        try:
            wanted.append(Health(part.strip()))
        except ValueError:
            raise invalid_request(
                "health",
                f"{part.strip()!r} is not one of {', '.join(h.value for h in Health)}",
                "unknown health class",
            ) from None
    return tuple(dict.fromkeys(wanted))


def encode_cursor(query: FleetQuery, value: float | None, vehicle_id: str) -> str:
    """The cursor of the page after the vehicle `vehicle_id` whose sort value is `value`."""
    raw = orjson.dumps(
        {
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "sort": query.sort.value,
            "order": query.order.value,
            "health": [h.value for h in query.health],
            "after": [value, vehicle_id],
        }
    )
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[FleetQuery, float | None, str]:
    """The query, sort value and vehicle id a cursor carries; 422 for one we did not give out."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        value, vehicle_id = raw["after"]
        query = FleetQuery(
            WHEN.validate_python(raw["from"]),
            WHEN.validate_python(raw["to"]),
            FleetSort(raw["sort"]),
            Order(raw["order"]),
            tuple(Health(h) for h in raw["health"]),
        )
        if not (value is None or isinstance(value, int | float)) or not isinstance(vehicle_id, str):
            raise ValueError(cursor)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise invalid_request(
            "cursor", "pass nextCursor from the previous page", "the cursor is not one we gave out"
        ) from None
    return query, (None if value is None else float(value)), vehicle_id

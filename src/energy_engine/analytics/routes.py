"""GET /v1/analytics/performance/{vehicleId}, its /series, and /v1/analytics/fleet."""

from __future__ import annotations

import base64
import heapq
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, NamedTuple

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from energy_engine.analytics import fleet, store
from energy_engine.analytics.models import (
    FleetReport,
    FleetSort,
    FleetTotals,
    Health,
    Order,
    PerformanceReport,
    PerformanceSeries,
    SeriesPoint,
    Step,
    StreamCounts,
    VehicleSummary,
    judge,
)
from energy_engine.analytics.store import Performance
from energy_engine.bounds import WHEN, When, duration_text
from energy_engine.db import Pool, as_sent
from energy_engine.deps import KnownVehicle, PoolDep, SettingsDep, VehicleIdPath
from energy_engine.errors import INVALID, UNAVAILABLE, UNKNOWN_DEVICE, invalid_request, not_found
from energy_engine.settings import Settings

router = APIRouter(tags=["analytics"], responses={**INVALID, **UNAVAILABLE})

From = Annotated[When | None, Query(alias="from")]
To = Annotated[When | None, Query(alias="to")]


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


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class Figures(NamedTuple):
    """A vehicle's rounded report numbers and health; light enough to rank a whole fleet (a
    named tuple: a fleet makes 10,000 of them per request, and a frozen dataclass took three
    times as long to build)."""

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
def _ac(found: Performance) -> float | None:
    return found.meter_kwh if found.meter_readings else None


def _dc(found: Performance) -> float | None:
    return found.dc.kwh if found.dc.readings else None


# The report's rounded figures from AC and DC (None: unknown); the fleet ranks on these.
def _rounded_efficiency(ac: float | None, dc: float | None) -> float | None:
    return round(dc / ac, 4) if ac and dc is not None else None


def _rounded_loss(ac: float | None, dc: float | None) -> float | None:
    return None if ac is None or dc is None else round(ac - dc, 6)


def _rounded_dc(ac: float | None, dc: float | None) -> float | None:
    return None if dc is None else round(dc, 6)


def _health(ac: float | None, dc: float | None, settings: Settings) -> Health:
    # On the unrounded efficiency.
    return judge(ac, dc / ac if ac and dc is not None else None, settings)


def figures(vehicle_id: str, found: Performance, settings: Settings) -> Figures:
    """The report's numbers for one vehicle's window, rounded, with its health class."""
    dc = _dc(found)
    ac = _ac(found)
    return Figures(
        vehicle_id,
        found,
        _round(ac, 6),
        _rounded_dc(ac, dc),
        _rounded_loss(ac, dc),
        _rounded_efficiency(ac, dc),
        _health(ac, dc, settings),
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
        avg_battery_temp=_round(dc.avg_battery_temp, 2),
        readings=StreamCounts(vehicle=dc.readings, meter=f.found.meter_readings),
        meter_ids=list(dict.fromkeys(f.found.meter_ids)),
        health=f.health,
        skipped_intervals=StreamCounts(vehicle=dc.skipped, meter=f.found.meter_skipped),
    )


def _json(model: BaseModel) -> Response:
    # Serialised here, once: returning the model would make FastAPI validate it again.
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


@router.get(
    "/v1/analytics/performance/{vehicleId}",
    response_model=PerformanceReport,
    responses=UNKNOWN_DEVICE,
)
async def vehicle_performance(
    vehicle_id: VehicleIdPath,
    pool: PoolDep,
    settings: SettingsDep,
    start: From = None,
    end: To = None,
) -> Response:
    """AC consumed vs DC delivered, efficiency, battery temperature and health over a window
    of up to 90 days (default: the last 24 hours)."""
    body = await performance_body(pool, settings, vehicle_id, start, end)
    return Response(body, media_type="application/json")


async def performance_body(
    pool: Pool, settings: Settings, vehicle_id: str, start: datetime | None, end: datetime | None
) -> bytes:
    """The report's JSON; ApiError for a bad window or an unknown vehicle. Shared by the route
    and the lean handler in front of FastAPI (analytics.endpoint)."""
    start, end = resolve_window(start, end, settings)
    async with pool.acquire() as conn:
        found = await store.performance(conn, vehicle_id, start, end, settings)
    if found is None:
        raise not_found("vehicle", vehicle_id)
    summary = summarize(figures(vehicle_id, found, settings))
    report = PerformanceReport(**dict(summary), from_=start, to=end)
    return report.model_dump_json(by_alias=True).encode()


@router.get(
    "/v1/analytics/performance/{vehicleId}/series",
    response_model=PerformanceSeries,
    responses=UNKNOWN_DEVICE,
)
async def vehicle_series(
    vehicle_id: KnownVehicle,
    pool: PoolDep,
    settings: SettingsDep,
    start: From = None,
    end: To = None,
    step: Annotated[Step, Query(description="1h or 1d; steps start on UTC hours or days")] = (
        Step.HOUR
    ),
) -> Response:
    """The performance report per step: AC, DC, efficiency, battery temperature and the SoC
    range of every UTC hour or day of the window (the first and last step cut to it). Each
    step's numbers are the report's for that step."""
    start, end = resolve_window(start, end, settings)
    step_length = timedelta(hours=1) if step is Step.HOUR else timedelta(days=1)
    if (end - start) / step_length > settings.max_series_points:
        raise invalid_request(
            "step",
            f"more than {settings.max_series_points} steps",
            f"a series holds at most {settings.max_series_points} steps; "
            "use step=1d or a shorter window",
        )
    async with pool.acquire() as conn:
        steps = await store.series(
            conn, vehicle_id, start, end, "hour" if step is Step.HOUR else "day", settings
        )
    points = []
    for s in steps:
        f = figures(vehicle_id, s.found, settings)
        points.append(
            SeriesPoint(
                from_=s.start,
                to=s.end,
                ac_consumed_kwh=f.ac_kwh,
                dc_delivered_kwh=f.dc_kwh,
                loss_kwh=f.loss_kwh,
                efficiency=f.efficiency,
                avg_battery_temp=_round(s.found.dc.avg_battery_temp, 2),
                soc_min=None if s.soc_min is None else as_sent(s.soc_min),
                soc_max=None if s.soc_max is None else as_sent(s.soc_max),
                readings=StreamCounts(vehicle=s.found.dc.readings, meter=s.found.meter_readings),
            )
        )
    return _json(
        PerformanceSeries(vehicle_id=vehicle_id, from_=start, to=end, step=step, points=points)
    )


@dataclass(frozen=True, slots=True)
class _Query:
    """What a fleet page is cut from; a cursor carries it to the next page."""

    start: datetime
    end: datetime
    sort: FleetSort
    order: Order
    health: tuple[Health, ...]


def _health_filter(values: list[str] | None) -> tuple[Health, ...]:
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


def _encode_cursor(query: _Query, value: float | None, vehicle_id: str) -> str:
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


def _decode_cursor(cursor: str) -> tuple[_Query, float | None, str]:
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        value, vehicle_id = raw["after"]
        query = _Query(
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


_SORTED_BY = {
    FleetSort.EFFICIENCY: _rounded_efficiency,
    FleetSort.LOSS_KWH: _rounded_loss,
    FleetSort.DC_DELIVERED_KWH: _rounded_dc,
}


def _sort_key(value: float | None, vehicle_id: str, ascending: bool) -> tuple[bool, float, str]:
    """Vehicles without a value last in either order; ties by vehicle id."""
    if value is None:
        return (True, 0.0, vehicle_id)
    return (False, value if ascending else -value, vehicle_id)


@dataclass(slots=True)
class _Ranking:
    """One pass over the fleet: the page's keys, how many match, and the totals."""

    keys: list[tuple[bool, float, str]]
    matching: int
    totals: FleetTotals


def _rank(
    numbers: dict[str, Performance],
    query: _Query,
    after: tuple[bool, float, str] | None,
    limit: int,
    settings: Settings,
) -> _Ranking:
    # A loop over plain floats: building the figures of 10,000 vehicles took about 80 ms a
    # request (py-spy), and only a page of them is shown. The sort values are the figures'
    # own rounded numbers (the same functions), so the order is the shown one.
    value_of = _SORTED_BY[query.sort]
    ascending = query.order is Order.ASC
    wanted = set(query.health)
    counts = dict.fromkeys(Health, 0)
    ac_total = dc_with_ac = dc_total = 0.0
    matching = 0
    keys = []
    for vehicle_id, found in numbers.items():
        dc = _dc(found)
        ac = _ac(found)
        health = _health(ac, dc, settings)
        counts[health] += 1
        dc_total += dc or 0.0
        if ac is not None:
            ac_total += ac
            dc_with_ac += dc or 0.0
        if wanted and health not in wanted:
            continue
        matching += 1
        key = _sort_key(value_of(ac, dc), vehicle_id, ascending)
        if after is None or key > after:
            keys.append(key)
    totals = FleetTotals(
        vehicles=len(numbers),
        ac_consumed_kwh=round(ac_total, 6),
        dc_delivered_kwh=round(dc_total, 6),
        loss_kwh=round(ac_total - dc_with_ac, 6),
        efficiency=round(dc_with_ac / ac_total, 4) if ac_total else None,
        health=counts,
    )
    # The page and whether another follows: a partial selection, not a sort of the fleet.
    return _Ranking(heapq.nsmallest(limit + 1, keys), matching, totals)


@router.get("/v1/analytics/fleet", response_model=FleetReport)
async def fleet_performance(
    pool: PoolDep,
    settings: SettingsDep,
    start: From = None,
    end: Annotated[
        When | None, Query(alias="to", description="default: the start of the current hour")
    ] = None,
    health: Annotated[
        list[str] | None,
        Query(description="only these health classes, e.g. critical,warning"),
    ] = None,
    sort: FleetSort = FleetSort.EFFICIENCY,
    order: Order = Order.ASC,
    limit: Annotated[int, Query(ge=1, le=1000, description="Vehicles per page.")] = 100,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page.")] = None,
) -> Response:
    """Every known vehicle's performance over the window, filtered by health, sorted and
    paginated, with fleet totals. The default window is the last 24 whole hours: whole hours
    are answered from rollups alone."""
    if cursor is not None:
        # The cursor pins the window, the order and the filter of the first page.
        query, after_value, after_id = _decode_cursor(cursor)
        resolve_window(query.start, query.end, settings)  # a cursor is input like any other
        after = _sort_key(after_value, after_id, query.order is Order.ASC)
    else:
        if end is None:
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            if start is not None and start >= end:
                end = None  # a window starting in the current hour: up to now
        start, end = resolve_window(start, end, settings)
        query = _Query(start, end, sort, order, _health_filter(health))
        after = None
    numbers = await fleet.fleet_numbers(pool, query.start, query.end, settings)
    ranking = _rank(numbers, query, after, limit, settings)
    page = [figures(key[2], numbers[key[2]], settings) for key in ranking.keys[:limit]]
    last = page[-1] if page else None
    return _json(
        FleetReport(
            from_=query.start,
            to=query.end,
            sort=query.sort,
            order=query.order,
            health=list(query.health),
            totals=ranking.totals,
            matching=ranking.matching,
            vehicles=[summarize(f) for f in page],
            next_cursor=(
                _encode_cursor(
                    query,
                    _SORTED_BY[query.sort](_ac(last.found), _dc(last.found)),
                    last.vehicle_id,
                )
                if last is not None and len(ranking.keys) > limit
                else None
            ),
        )
    )

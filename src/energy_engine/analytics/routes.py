"""The analytics routes FastAPI serves (a vehicle's series, the fleet), and the declaration of
the per-vehicle report, which `analytics.endpoint` answers in front of FastAPI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from energy_engine.analytics import fleet, store
from energy_engine.analytics.endpoint import performance_body
from energy_engine.analytics.figures import ac_kwh, dc_kwh, figures, rounded, summarize
from energy_engine.analytics.models import (
    FleetReport,
    FleetSort,
    Order,
    PerformanceReport,
    PerformanceSeries,
    SeriesPoint,
    Step,
    StreamCounts,
)
from energy_engine.analytics.query import (
    FleetQuery,
    coverage,
    decode_cursor,
    encode_cursor,
    health_filter,
    resolve_window,
)
from energy_engine.analytics.ranking import SORTED_BY, rank, sort_key
from energy_engine.bounds import When
from energy_engine.db import as_sent
from energy_engine.deps import KnownReadVehicle, ReadPoolDep, SettingsDep, VehicleIdPath
from energy_engine.errors import INVALID, UNAVAILABLE, UNKNOWN_DEVICE, invalid_request

router = APIRouter(tags=["analytics"], responses={**INVALID, **UNAVAILABLE})

From = Annotated[When | None, Query(alias="from")]
To = Annotated[When | None, Query(alias="to")]


def _json(model: BaseModel) -> Response:
    # Serialised here, once: returning the model would make FastAPI validate it again.
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


async def vehicle_performance(
    vehicle_id: VehicleIdPath,
    pool: ReadPoolDep,
    settings: SettingsDep,
    start: From = None,
    end: To = None,
) -> Response:
    """AC consumed vs DC delivered, efficiency, battery temperature and health over a window
    of up to 90 days (default: the last 24 hours)."""
    body = await performance_body(pool, settings, vehicle_id, start, end)
    return Response(body, media_type="application/json")


# Not mounted: `routing` serves this route with analytics.endpoint and builds its OpenAPI
# operation from this declaration. Mounted on a bare FastAPI app, the declaration answers as
# FastAPI would; the tests hold the lean handler to that.
PERFORMANCE = APIRoute(
    "/v1/analytics/performance/{vehicleId}",
    vehicle_performance,
    methods=["GET"],
    tags=["analytics"],
    response_model=PerformanceReport,
    responses={**INVALID, **UNAVAILABLE, **UNKNOWN_DEVICE},
)


@router.get(
    "/v1/analytics/performance/{vehicleId}/series",
    response_model=PerformanceSeries,
    responses=UNKNOWN_DEVICE,
)
async def vehicle_series(
    vehicle_id: KnownReadVehicle,
    pool: ReadPoolDep,
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
                avg_battery_temp=rounded(s.found.dc.avg_battery_temp, 2),
                soc_min=None if s.soc_min is None else as_sent(s.soc_min),
                soc_max=None if s.soc_max is None else as_sent(s.soc_max),
                readings=StreamCounts(vehicle=s.found.dc.readings, meter=s.found.meter_readings),
            )
        )
    history_from, partial = coverage(start, end, settings)
    return _json(
        PerformanceSeries(
            vehicle_id=vehicle_id,
            from_=start,
            to=end,
            step=step,
            history_from=history_from,
            partial=partial,
            points=points,
        )
    )


@router.get("/v1/analytics/fleet", response_model=FleetReport)
async def fleet_performance(
    pool: ReadPoolDep,
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
        query, after_value, after_id = decode_cursor(cursor)
        resolve_window(query.start, query.end, settings)  # a cursor is input like any other
        after = sort_key(after_value, after_id, query.order is Order.ASC)
    else:
        if end is None:
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            if start is not None and start >= end:
                end = None  # a window starting in the current hour: up to now
        start, end = resolve_window(start, end, settings)
        query = FleetQuery(start, end, sort, order, health_filter(health))
        after = None
    rows = await fleet.fleet_rows(pool, query.start, query.end, settings)
    ranking = rank(rows, query, after, limit, settings)
    shown = {key[2] for key in ranking.keys[:limit]}
    found = {row[0]: fleet.performance_of(row) for row in rows if row[0] in shown}
    page = [figures(key[2], found[key[2]], settings) for key in ranking.keys[:limit]]
    last = page[-1] if page else None
    history_from, partial = coverage(query.start, query.end, settings)
    return _json(
        FleetReport(
            from_=query.start,
            to=query.end,
            history_from=history_from,
            partial=partial,
            sort=query.sort,
            order=query.order,
            health=list(query.health),
            totals=ranking.totals,
            matching=ranking.matching,
            vehicles=[summarize(f) for f in page],
            next_cursor=(
                encode_cursor(
                    query,
                    SORTED_BY[query.sort](ac_kwh(last.found), dc_kwh(last.found)),
                    last.vehicle_id,
                )
                if last is not None and len(ranking.keys) > limit
                else None
            ),
        )
    )

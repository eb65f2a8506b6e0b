"""GET /v1/analytics/performance/{vehicleId}."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from energy_engine.analytics import store
from energy_engine.analytics.models import PerformanceReport, StreamCounts, judge
from energy_engine.deps import PoolDep, SettingsDep
from energy_engine.errors import ApiError, ErrorBody, ErrorItem, not_found
from energy_engine.settings import Settings

router = APIRouter(tags=["analytics"])

_WHEN = "ISO-8601 with a UTC offset, e.g. 2026-11-22T08:00:00Z"


def resolve_window(
    start: datetime | None, end: datetime | None, settings: Settings
) -> tuple[datetime, datetime]:
    """[from, to) from the query: `to` defaults to now, `from` to one default window before."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise ApiError(
                422,
                "invalid_request",
                "times need a UTC offset",
                [ErrorItem(field=name, reason="add a UTC offset such as Z or +01:00")],
            )
    end = end or datetime.now(UTC)
    start = start or end - settings.default_window
    if start >= end:
        raise ApiError(
            422,
            "invalid_request",
            "from must be before to",
            [ErrorItem(field="from", reason="not before to")],
        )
    if end - start > settings.max_window:
        raise ApiError(
            422,
            "invalid_request",
            f"the window may span at most {settings.max_window}",
            [ErrorItem(field="from", reason="window too long")],
        )
    return start, end


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@router.get(
    "/v1/analytics/performance/{vehicle_id}",
    response_model=PerformanceReport,
    responses={404: {"model": ErrorBody}},
)
async def vehicle_performance(
    vehicle_id: str,
    pool: PoolDep,
    settings: SettingsDep,
    start: Annotated[datetime | None, Query(alias="from", description=_WHEN)] = None,
    end: Annotated[datetime | None, Query(alias="to", description=_WHEN)] = None,
) -> Response:
    """AC consumed vs DC delivered, efficiency, battery temperature and health over a window."""
    start, end = resolve_window(start, end, settings)
    async with pool.acquire() as conn:
        found = await store.performance(conn, vehicle_id, start, end, settings)
    if found is None:
        raise not_found("vehicle", vehicle_id)
    dc = found.dc
    # AC is known only where an assigned meter reported in the window.
    ac = found.meter_kwh if found.meter_readings else None
    efficiency = dc.kwh / ac if ac else None
    report = PerformanceReport(
        vehicle_id=vehicle_id,
        from_=start,
        to=end,
        ac_consumed_kwh=_round(ac, 6),
        dc_delivered_kwh=round(dc.kwh, 6),
        loss_kwh=None if ac is None else round(ac - dc.kwh, 6),
        efficiency=_round(efficiency, 4),
        avg_battery_temp=_round(dc.avg_battery_temp, 2),
        readings=StreamCounts(vehicle=dc.readings, meter=found.meter_readings),
        meter_ids=list(dict.fromkeys(found.meter_ids)),
        health=judge(ac, efficiency, settings),
        skipped_intervals=StreamCounts(vehicle=dc.skipped, meter=found.meter_skipped),
    )
    # Serialised here, once: returning the model would make FastAPI validate it again.
    return Response(report.model_dump_json(by_alias=True), media_type="application/json")

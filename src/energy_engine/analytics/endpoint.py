"""GET /v1/analytics/performance/{vehicleId}, answered in front of FastAPI (see `routing`).

Dashboards ask for one vehicle's report at a time, so its per-request cost bounds how many
they can ask for, and FastAPI's request path (routing, dependency resolution, query-parameter
models, the response cycle) cost more than the report's query. This handler answers every
request for the route itself, errors included, exactly as the route declared in
`analytics.routes` would: the same parameters read the way Starlette reads a query string
(others ignored, the last of a repeated one wins), the same validators (`bounds`), and the
same 422 naming each bad parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import TypeAdapter, ValidationError

from energy_engine.analytics import store
from energy_engine.analytics.figures import figures, summarize
from energy_engine.analytics.models import PerformanceReport
from energy_engine.analytics.query import coverage, resolve_window
from energy_engine.asgi import Receive, Scope, Send, answer
from energy_engine.bounds import DEVICE_ID, WHEN, DeviceId
from energy_engine.db import Pool
from energy_engine.errors import (
    ApiError,
    ErrorItem,
    error_json,
    invalid,
    not_found,
    reason_of,
    unavailable,
)
from energy_engine.settings import Settings

# Only to word a refused id as FastAPI's path validation does; a match is checked by DEVICE_ID.
_VEHICLE_ID: TypeAdapter[str] = TypeAdapter(DeviceId)


async def performance_body(
    pool: Pool, settings: Settings, vehicle_id: str, start: datetime | None, end: datetime | None
) -> bytes:
    """The report's JSON; ApiError for a bad window or an unknown vehicle."""
    start, end = resolve_window(start, end, settings)
    async with pool.acquire() as conn:
        found = await store.performance(conn, vehicle_id, start, end, settings)
    if found is None:
        raise not_found("vehicle", vehicle_id)
    summary = summarize(figures(vehicle_id, found, settings))
    history_from, partial = coverage(start, end, settings)
    report = PerformanceReport(
        **dict(summary), from_=start, to=end, history_from=history_from, partial=partial
    )
    return report.model_dump_json(by_alias=True).encode()


def parameters(vehicle_id: str, query_string: bytes) -> tuple[datetime | None, datetime | None]:
    """`from` and `to` of the query, parsed; 422 naming every bad parameter (the id too)."""
    start = end = None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "from":
            start = value
        elif name == "to":
            end = value
    try:
        if DEVICE_ID.fullmatch(vehicle_id) is None:
            raise ValueError(vehicle_id)
        return (
            None if start is None else WHEN.validate_python(start),
            None if end is None else WHEN.validate_python(end),
        )
    except ValueError:  # a pydantic ValidationError too
        problems = _problems("vehicleId", _VEHICLE_ID, vehicle_id)
        problems += _problems("from", WHEN, start)
        problems += _problems("to", WHEN, end)
        raise invalid(problems) from None


def _problems(field: str, adapter: TypeAdapter[Any], value: str | None) -> list[ErrorItem]:
    if value is None:
        return []
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return [ErrorItem(field=field, reason=reason_of(detail)) for detail in exc.errors()]
    return []


class ReportHandler:
    """Answers GET /v1/analytics/performance/{vehicleId}."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send, vehicle_id: str) -> None:
        try:
            window = parameters(vehicle_id, scope["query_string"])
            body = await performance_body(
                scope["app"].state.read_pool, self.settings, vehicle_id, *window
            )
        except ApiError as error:
            await answer(send, error.status, error_json(error), error.headers)
            return
        except Exception as exc:  # the database down or out of time: 503 (errors.unavailable)
            outage = unavailable(exc, self.settings.unavailable_retry_after)
            if outage is None:
                raise
            await answer(send, outage.status, error_json(outage), outage.headers)
            return
        await answer(send, 200, body)

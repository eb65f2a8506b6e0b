"""GET /v1/analytics/performance/{vehicleId} as a lean ASGI handler in front of FastAPI.

Dashboards ask for one vehicle's report at a time, so its per-request cost bounds how many
they can ask for. Under load py-spy put most of the engine's time for this route in
FastAPI's request path (routing, dependency resolution, query-parameter models, the response
cycle) rather than in the query. This handler answers the plain cases itself: the vehicle id
from the path, `from`/`to` parsed by the same Pydantic validator FastAPI uses, and the body
built by the same function as the route (`routes.performance_body`). Anything else (another
parameter, a repeated or empty one, a value that does not parse, another method) goes on to
FastAPI, so errors and documentation stay FastAPI's.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

from pydantic import ValidationError

from energy_engine.analytics.routes import performance_body
from energy_engine.asgi import ASGIApp, Receive, Scope, Send, answer
from energy_engine.bounds import DEVICE_ID, WHEN
from energy_engine.errors import ApiError, error_json, unavailable
from energy_engine.settings import Settings

PREFIX = "/v1/analytics/performance/"


def _window(query_string: bytes) -> tuple[datetime | None, datetime | None] | None:
    """`from` and `to` when the query holds nothing else, each once and parsed; else None."""
    # As Starlette reads a query string.
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    values = dict(pairs)
    if len(values) != len(pairs) or not values.keys() <= {"from", "to"}:
        return None
    try:
        parsed = {name: WHEN.validate_python(value) for name, value in values.items()}
    except ValidationError:
        return None
    return parsed.get("from"), parsed.get("to")


class AnalyticsMiddleware:
    """Answers plain report requests; hands every other request to the wrapped app."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        vehicle_id = path[len(PREFIX) :]
        window = (
            _window(scope["query_string"])
            if scope["type"] == "http"
            and scope["method"] == "GET"
            and path.startswith(PREFIX)
            and DEVICE_ID.fullmatch(vehicle_id)
            else None
        )
        if window is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await performance_body(
                scope["app"].state.pool, self.settings, vehicle_id, *window
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

"""Every route the engine answers, and which handler answers it.

FastAPI serves the routes of `ROUTERS` (and the health checks of `app`). The hot routes, the
ingest paths and the per-vehicle report, are answered by lean ASGI handlers in front of
FastAPI (why: `ingest.endpoint`, `analytics.endpoint`): `LEAN_ROUTES` pairs each with the
FastAPI declaration of its path, method, parameters and responses. `LeanRoutes` dispatches on
those paths and methods whatever the query string, and `openapi` documents them from the same
declarations, so the document and the handlers cannot disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from energy_engine.analytics import routes as analytics
from energy_engine.analytics.endpoint import ReportHandler
from energy_engine.asgi import ASGIApp, Receive, Scope, Send, answer
from energy_engine.assignments.routes import router as assignments_router
from energy_engine.errors import error_json, not_allowed
from energy_engine.ingest import routes as ingest
from energy_engine.ingest.endpoint import IngestHandler
from energy_engine.ingest.models import AnyReading, MeterReading, VehicleReading
from energy_engine.observability.routes import router as metrics_router
from energy_engine.settings import Settings
from energy_engine.status.routes import router as status_router

# A lean route's handler; the last argument is the path's one `{parameter}` ("" when none).
Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LeanRoute:
    """A route answered in front of FastAPI: its declaration (path, method and everything the
    OpenAPI document says; never mounted) and how to build its handler for an app."""

    declared: APIRoute
    handler: Callable[[Settings], Handler]


ROUTERS: Sequence[APIRouter] = (
    assignments_router,
    status_router,
    analytics.router,
    metrics_router,
)

LEAN_ROUTES: Sequence[LeanRoute] = (
    LeanRoute(ingest.READINGS, partial(IngestHandler, AnyReading)),
    LeanRoute(ingest.METER_READINGS, partial(IngestHandler, MeterReading)),
    LeanRoute(ingest.VEHICLE_READINGS, partial(IngestHandler, VehicleReading)),
    LeanRoute(analytics.PERFORMANCE, ReportHandler),
)


def served_routes(app: FastAPI) -> list[APIRoute]:
    """Every route `app` answers: the lean routes' declarations, the routes of `ROUTERS` and
    the app's own (the health checks; documentation pages are not APIRoutes)."""
    return [
        *(route.declared for route in LEAN_ROUTES),
        *(route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)),
        *(route for route in app.routes if isinstance(route, APIRoute)),
    ]


class LeanRoutes:
    """Answers the paths of `routes` with their handlers (405 for another method) and hands
    every other request to the wrapped app. A path is found by one dict lookup: by itself, or
    by its parent for a path whose last segment is its one parameter."""

    def __init__(self, app: ASGIApp, settings: Settings, routes: Sequence[LeanRoute]) -> None:
        self.app = app
        self.fixed: dict[str, dict[str, Handler]] = {}
        self.by_parent: dict[str, dict[str, Handler]] = {}
        for route in routes:
            path = route.declared.path
            parent, _, last = path.rpartition("/")
            by_parent = last.startswith("{") and last.endswith("}")
            if "{" in parent or (not by_parent and "{" in last):
                raise ValueError(f"{path}: a lean path has at most one parameter, at its end")
            table, key = (self.by_parent, parent) if by_parent else (self.fixed, path)
            handler = route.handler(settings)
            for method in route.declared.methods or ():
                table.setdefault(key, {})[method] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            parameter = ""
            methods = self.fixed.get(path)
            if methods is None:
                parent, _, parameter = path.rpartition("/")
                methods = self.by_parent.get(parent) if parameter else None
            if methods is not None:
                handler = methods.get(scope["method"])
                if handler is None:
                    wrong = not_allowed(scope["method"], ", ".join(sorted(methods)))
                    await answer(send, wrong.status, error_json(wrong), wrong.headers)
                else:
                    await handler(scope, receive, send, parameter)
                return
        await self.app(scope, receive, send)


def openapi(app: FastAPI, routes: Sequence[LeanRoute]) -> dict[str, Any]:
    """The document of the app's FastAPI routes and of `routes`, plus the reading schemas the
    ingest routes' bodies refer to."""
    if app.openapi_schema:
        return app.openapi_schema
    declared = [route.declared for route in routes]
    doc = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=[*declared, *app.routes]
    )
    schema = TypeAdapter(AnyReading).json_schema(ref_template=ingest.SCHEMA_REF)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs"))
    schema.pop("discriminator", None)  # the tag is computed from the fields, not a property
    components["AnyReading"] = schema
    app.openapi_schema = doc
    return doc

"""One routing table: every route is documented and served by one handler, and the lean
handlers answer exactly as their FastAPI declarations would, whatever the query string."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from fastapi.routing import APIRoute

from energy_engine.analytics.routes import PERFORMANCE
from energy_engine.app import create_app
from energy_engine.asgi import Message, Receive, Scope, Send
from energy_engine.errors import install_error_handlers, install_outage_handlers
from energy_engine.routing import LEAN_ROUTES, ROUTERS, LeanRoute, LeanRoutes
from energy_engine.settings import Settings
from tests.conftest import admin, app_client, with_database
from tests.readings import iso, meter, minute_ago, vehicle

# One engine for the module, charged once: every request below only reads.
pytestmark = pytest.mark.asyncio(loop_scope="module")

T0 = minute_ago(120)
WINDOW = {"from": iso(T0 - timedelta(minutes=5)), "to": iso(T0 + timedelta(minutes=65))}
FROM, TO = (WINDOW[name].replace("+", "%2B") for name in ("from", "to"))


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def _served(routes: list[APIRoute]) -> set[tuple[str, str]]:
    return {(method, route.path) for route in routes for method in route.methods or ()}


# Building the app and its document connects to nothing.
OFFLINE = Settings(_env_file=None, database_url="postgresql://nobody@127.0.0.1:1/none")


async def test_the_document_and_the_handlers_list_the_same_routes() -> None:
    app = create_app(OFFLINE)
    routes = [*app.routes, *(route for router in ROUTERS for route in router.routes)]
    mounted = [r for r in routes if isinstance(r, APIRoute) and r.include_in_schema]
    lean = _served([route.declared for route in LEAN_ROUTES])
    fastapi = _served(mounted)
    assert lean and not lean & fastapi  # one handler per route: lean routes are not mounted
    assert _operations(app.openapi()) == lean | fastapi


async def test_a_lean_path_takes_one_parameter_at_its_end() -> None:
    async def endpoint() -> None: ...

    async def handler(scope: Scope, receive: Receive, send: Send, parameter: str) -> None: ...

    odd = LeanRoute(APIRoute("/v1/{a}/b", endpoint, methods=["GET"]), lambda _: handler)
    with pytest.raises(ValueError, match="at most one parameter"):
        LeanRoutes(_downstream, OFFLINE, [odd])


async def _downstream(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError(f"{scope['method']} {scope['path']} reached FastAPI")


async def _charge(client: httpx.AsyncClient) -> None:
    minutes = range(61)
    await client.post(
        "/v1/ingest/meter", json=[meter("M-1", T0 + timedelta(minutes=m), m * 1.0) for m in minutes]
    )
    await client.post(
        "/v1/ingest/vehicle",
        json=[vehicle("V-1", T0 + timedelta(minutes=m), m * 0.9) for m in minutes],
    )
    response = await client.post(
        "/v1/assignments",
        json={"vehicleId": "V-1", "meterId": "M-1", "validFrom": iso(T0 - timedelta(hours=1))},
    )
    assert response.status_code == 201


class Engine:
    """The engine (lean routes in front), and FastAPI serving the report's declaration itself
    on the same pool and settings."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        reference = FastAPI()
        reference.state.settings = app.state.settings
        reference.state.pool = app.state.pool
        reference.state.read_pool = app.state.read_pool
        install_error_handlers(reference)
        install_outage_handlers(reference)
        reference.router.routes.append(PERFORMANCE)
        self.client = _client(app)
        self.declared = _client(reference)


def _client(app: FastAPI) -> httpx.AsyncClient:
    return app_client(app)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Engine]:
    name = f"routing_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    data_dir = Path(tmp_path_factory.mktemp("engine"))
    settings = Settings(
        _env_file=None, database_url=with_database(postgres_url, name), data_dir=data_dir
    )
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            found = Engine(app)
            async with found.client, found.declared:
                await _charge(found.client)
                yield found
    finally:
        await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


ODD_ID = "car%201"
QUERIES = [
    ("V-1", f"from={FROM}&to={TO}"),
    ("V-1", f"from={FROM}&to={TO}&via=fastapi"),  # an unknown parameter is ignored
    ("V-1", f"to={TO}&from=2026-01-01T00:00:00Z&from={FROM}"),  # the last one counts
    ("V-1", f"from=soon&from={FROM}&to={TO}"),
    ("V-1", f"from={FROM}&to={TO}&from=soon"),
    ("V-1", f"FROM=soon&from={FROM}&to={TO}&step=1h&limit=x"),
    ("V-1", f"from={FROM}"),
    ("V-1", ""),
    ("V-1", "from="),
    ("V-1", "from&to"),
    ("V-1", "to=&from=soon"),
    ("V-1", "from=2026-01-01T00:00:00"),
    ("V-1", "from=2026-11-28T10:00:00 01:00"),
    ("V-1", "from=1999-12-31T23:59:59Z&to=9999-12-31T23:59:59Z"),
    ("V-1", f"from={TO}&to={FROM}"),
    ("V-1", "from=%ff%fe&to=%00"),
    ("ghost", f"from={FROM}&to={TO}"),
    (ODD_ID, f"from={FROM}&to={TO}"),
    (ODD_ID, "from=soon&x=1"),
    ("x" * 65, ""),
]


@pytest.mark.parametrize(("vehicle_id", "query"), QUERIES)
async def test_the_report_answers_as_its_declaration_whatever_the_query(
    engine: Engine, vehicle_id: str, query: str
) -> None:
    url = f"/v1/analytics/performance/{vehicle_id}?{query}"
    lean, reference = await engine.client.get(url), await engine.declared.get(url)
    assert lean.status_code == reference.status_code
    assert lean.headers["content-type"] == reference.headers["content-type"]
    lean_body, reference_body = lean.json(), reference.json()
    if lean.status_code == 200 and "to=" + TO not in query:
        # The default window ends at each request's own now.
        for body in (lean_body, reference_body):
            assert datetime.fromisoformat(body.pop("to")) <= datetime.now(UTC)
            body.pop("from")
    assert lean_body == reference_body


async def test_the_report_figures_are_the_charged_energy(engine: Engine) -> None:
    body = (await engine.client.get("/v1/analytics/performance/V-1", params=WINDOW)).json()
    assert body["acConsumedKwh"] == pytest.approx(60.0)  # 60 minutes at 1 kWh each
    assert body["dcDeliveredKwh"] == pytest.approx(54.0)


@pytest.mark.parametrize(
    "query",
    [f"from={FROM}&to={TO}", f"from={FROM}&to={TO}&via=fastapi", "from=", "from=soon&step=1h"],
)
async def test_the_lean_handler_answers_every_query_without_fastapi(
    engine: Engine, query: str
) -> None:
    sent = await _call(
        LeanRoutes(_downstream, engine.app.state.settings, LEAN_ROUTES),
        engine.app,
        "GET",
        "/v1/analytics/performance/V-1",
        query.encode(),
    )
    assert sent[0]["status"] in (200, 422)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/ingest", "POST"),
        ("PUT", "/v1/ingest/meter", "POST"),
        ("POST", "/v1/analytics/performance/V-1", "GET"),
        ("HEAD", "/v1/analytics/performance/V-1", "GET"),
    ],
)
async def test_another_method_on_a_lean_path_is_405_there(
    method: str, path: str, allow: str
) -> None:
    sent = await _call(LeanRoutes(_downstream, OFFLINE, LEAN_ROUTES), None, method, path, b"")
    assert sent[0]["status"] == 405
    assert (b"allow", allow.encode()) in sent[0]["headers"]
    assert sent[1]["body"].startswith(b'{"error":"method_not_allowed"')


@pytest.mark.parametrize(
    "path",
    [
        "/v1/analytics/performance/V-1/series",
        "/v1/analytics/performance/",
        "/v1/analytics/performance",
        "/v1/ingest/",
        "/v1/ingest/meter/x",
    ],
)
async def test_other_paths_go_on_to_fastapi(path: str) -> None:
    reached: list[str] = []

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])

    await _call(LeanRoutes(downstream, OFFLINE, LEAN_ROUTES), None, "GET", path, b"")
    assert reached == [path]


async def _call(
    asgi: LeanRoutes, app: FastAPI | None, method: str, path: str, query: bytes
) -> list[Message]:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [],
        "app": app,
    }
    await asgi(scope, receive, send)
    return sent

"""API keys through the whole app: every route of the routing table refuses a missing,
malformed, wrong, revoked or wrong-scope key; device keys write their own readings only;
the open routes stay open; revocation reaches a running app; the `keys` commands."""

from __future__ import annotations

import asyncio
import gzip
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from typer.testing import CliRunner

from energy_engine.app import create_app
from energy_engine.auth import cache, keyfile, store
from energy_engine.auth.keys import NewKey, Scope, generate
from energy_engine.auth.middleware import scope_needed
from energy_engine.cli import cli
from energy_engine.routing import served_routes
from energy_engine.settings import Settings
from tests.conftest import ClientWith, admin, app_client, with_database
from tests.readings import meter, minute_ago, vehicle

ON_THE_MODULE_APP = pytest.mark.asyncio(loop_scope="module")

OFFLINE = Settings(_env_file=None, database_url="postgresql://nobody@127.0.0.1:1/none")
SAMPLE = {"vehicleId": "V-1", "meterId": "M-1"}


def _route_table() -> list[tuple[str, str, Scope]]:
    """Every (method, path, scope needed) the engine serves, from the one routing table, with
    sample values in the path: a route added later is covered without touching this file."""
    found = []
    for route in served_routes(create_app(OFFLINE)):
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE.get(m[1], "x"), route.path)
        for method in sorted(route.methods or ()):
            found.append((method, path, scope_needed(method, route.path, route.tags)))
    return found


ROUTES = _route_table()
# docs: by default; "/": the dashboard's page, whose API calls carry the operator's key
OPEN = {("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/docs"), ("GET", "/")}
GUARDED = [route for route in ROUTES if route[:2] not in OPEN]


def test_the_table_holds_every_kind_of_route() -> None:
    assert {scope for _, _, scope in GUARDED} >= {Scope.INGEST, Scope.READ, Scope.ADMIN}
    assert {route[:2] for route in ROUTES} >= OPEN
    assert len(GUARDED) >= 11


class Keys:
    """Keys stored in the module's database: one per scope, one revoked, one device-bound."""

    def __init__(self) -> None:
        self.by_scope = {scope: generate((scope,), name=scope.value) for scope in Scope}
        self.revoked = generate((Scope.ADMIN,), name="revoked")
        self.device = generate((Scope.INGEST,), name="device", device_id="M-dev")
        self.never_stored = generate((Scope.ADMIN,))

    def stored(self) -> list[NewKey]:
        return [*self.by_scope.values(), self.revoked, self.device]


KEYS = Keys()


def bearer(key: NewKey | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key if isinstance(key, str) else key.text}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client without a key on one app for the module, and its database's URL."""
    name = f"auth_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    url = with_database(postgres_url, name)
    conn = await asyncpg.connect(url)
    try:
        for key in KEYS.stored():
            await store.insert_key(conn, key)
        await store.revoke_key(conn, KEYS.revoked.id)
    finally:
        await conn.close()
    settings = Settings(_env_file=None, database_url=url, data_dir=tmp_path_factory.mktemp("e"))
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app), app_client(app, headers=None) as http:
            yield http, url
    finally:
        await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "errors"}
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer realm=")
    return body


def _wrong_scope(needed: Scope) -> NewKey:
    return KEYS.by_scope[Scope.READ if needed is not Scope.READ else Scope.INGEST]


@ON_THE_MODULE_APP
@pytest.mark.parametrize(
    ("method", "path", "needed"), GUARDED, ids=[f"{m} {p}" for m, p, _ in GUARDED]
)
async def test_every_route_refuses_what_is_not_a_valid_key_with_its_scope(
    engine: tuple[httpx.AsyncClient, str], method: str, path: str, needed: Scope
) -> None:
    http, _ = engine
    body: dict[str, Any] | None = {} if method == "POST" else None

    async def send(headers: dict[str, str]) -> httpx.Response:
        return await http.request(method, path, headers=headers, json=body)

    assert _refused(await send({}), 401)["message"].startswith("send an API key")
    for malformed in (
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-key",
        KEYS.by_scope[needed].text,
    ):
        _refused(await send({"Authorization": malformed}), 401)
    _refused(await send(bearer(KEYS.never_stored)), 401)
    assert "revoked" in _refused(await send(bearer(KEYS.revoked)), 401)["message"]
    forbidden = _refused(await send(bearer(_wrong_scope(needed))), 403)
    assert repr(needed.value) in forbidden["message"]
    for allowed in (KEYS.by_scope[needed], KEYS.by_scope[Scope.ADMIN]):
        assert (await send(bearer(allowed))).status_code not in (401, 403)


@ON_THE_MODULE_APP
@pytest.mark.parametrize(
    "path",
    [
        "/health/live",
        "/health/ready",
        "/docs",
        "/openapi.json",
        "/",
        "/dashboard/static/dashboard.js",
    ],
)
async def test_the_open_routes_need_no_key(
    engine: tuple[httpx.AsyncClient, str], path: str
) -> None:
    http, _ = engine
    assert (await http.get(path)).status_code == 200


@ON_THE_MODULE_APP
async def test_an_unknown_path_is_401_without_a_key_and_404_with_one(
    engine: tuple[httpx.AsyncClient, str],
) -> None:
    http, _ = engine
    _refused(await http.get("/v1/nowhere"), 401)
    assert _refused(await http.get("/v1/nowhere", headers=bearer(KEYS.by_scope[Scope.READ])), 404)
    wrong_method = await http.delete("/v1/fleet/status", headers=bearer(KEYS.by_scope[Scope.READ]))
    assert wrong_method.status_code == 405


@ON_THE_MODULE_APP
async def test_the_document_declares_the_bearer_scheme_and_each_scope(
    engine: tuple[httpx.AsyncClient, str],
) -> None:
    http, _ = engine
    doc = (await http.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
    }
    operations = {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert operations[("POST", "/v1/ingest")]["security"] == [{"apiKey": ["ingest"]}]
    assert operations[("POST", "/v1/assignments")]["security"] == [{"apiKey": ["admin"]}]
    assert operations[("GET", "/v1/fleet/status")]["security"] == [{"apiKey": ["read"]}]
    assert operations[("GET", "/health/live")]["security"] == []
    assert {"401", "403", "429"} <= operations[("GET", "/v1/fleet/status")]["responses"].keys()


async def _stored_devices(url: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT meter_id AS id FROM meter_readings WHERE meter_id LIKE $1"
            " UNION ALL SELECT vehicle_id FROM vehicle_readings WHERE vehicle_id LIKE $1",
            prefix + "%",
        )
    finally:
        await conn.close()
    return sorted(row["id"] for row in rows)


@ON_THE_MODULE_APP
async def test_a_device_key_writes_its_own_readings_only(
    engine: tuple[httpx.AsyncClient, str],
) -> None:
    http, url = engine
    key = bearer(KEYS.device)
    at = minute_ago(3)
    other = await http.post("/v1/ingest/meter", json=meter("M-other", at, 1.0), headers=key)
    body = _refused(other, 403)
    assert body["message"].startswith("the reading belongs to another device")
    assert body["errors"] == [
        {
            "index": None,
            "field": "meterId",
            "reason": "this API key may write readings of 'M-dev' only",
        }
    ]
    batch = [meter("M-dev", at, 1.0), vehicle("M-devx", at, 1.0), meter("M-dev2", at, 2.0)]
    body = _refused(await http.post("/v1/ingest", json=batch, headers=key), 403)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "vehicleId"), (2, "meterId")]
    assert body["message"].startswith("2 of the 3 readings belong to another device")
    lines = b"\n".join(orjson.dumps(r) for r in [batch[0], batch[0], batch[2]])
    ndjson = {**key, "content-type": "application/x-ndjson", "content-encoding": "gzip"}
    body = _refused(
        await http.post("/v1/ingest", content=gzip.compress(b"\n" + lines), headers=ndjson), 403
    )
    assert [e["index"] for e in body["errors"]] == [3]  # NDJSON lines, the blank one counted
    assert await _stored_devices(url, "M-dev") == []  # nothing of a refused request
    own = await http.post("/v1/ingest/meter", json=[meter("M-dev", at, 1.0)], headers=key)
    assert own.json() == {"accepted": 1, "duplicates": 0}
    assert await _stored_devices(url, "M-dev") == ["M-dev"]
    _refused(await http.get("/v1/meters/M-dev/status", headers=key), 403)  # ingest only


async def test_docs_can_need_a_key_or_be_off(client_with: ClientWith) -> None:
    async with client_with(docs="auth") as http:
        _refused(await http.get("/openapi.json", headers={"Authorization": ""}), 401)
        _refused(await http.get("/docs", headers={"Authorization": ""}), 401)
        _refused(await http.get("/docs/assets/swagger-ui.css", headers={"Authorization": ""}), 401)
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/docs/assets/swagger-ui.css")).status_code == 200
    async with client_with(docs="off") as http:
        assert (await http.get("/docs")).status_code == 404
        assert (await http.get("/openapi.json")).status_code == 404


async def test_cors_is_off_by_default_and_answers_the_origins_set(client_with: ClientWith) -> None:
    origin = {"Origin": "https://dash.example"}
    async with client_with() as http:
        plain = await http.get("/v1/fleet/status", headers=origin)
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    async with client_with(cors_origins="https://dash.example") as http:
        preflight = await http.options(
            "/v1/fleet/status",
            headers={
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
        refused = await http.get("/v1/fleet/status", headers={**origin, "Authorization": ""})
        assert refused.status_code == 401  # and the page may read why:
        assert refused.headers["access-control-allow-origin"] == "https://dash.example"
        stranger = await http.get("/v1/fleet/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


async def test_with_auth_off_every_route_is_open(client_with: ClientWith) -> None:
    async with client_with(auth=False) as http:
        answer = await http.get("/v1/fleet/status", headers={"Authorization": ""})
        assert answer.status_code == 200
        doc = (await http.get("/openapi.json")).json()
        assert "securitySchemes" not in doc["components"]


async def test_a_new_key_works_at_once_and_a_revoked_one_stops_within_the_refresh(
    client_with: ClientWith, conn: asyncpg.Connection
) -> None:
    refresh = timedelta(milliseconds=300)
    async with client_with(auth_refresh_every=refresh) as http:
        key = generate((Scope.READ,))
        await store.insert_key(conn, key)
        assert (await http.get("/v1/fleet/status", headers=bearer(key))).status_code == 200
        await store.revoke_key(conn, key.id)
        revoked_at = time.monotonic()
        while (await http.get("/v1/fleet/status", headers=bearer(key))).status_code == 200:
            assert time.monotonic() - revoked_at < 3 * refresh.total_seconds(), "still accepted"
            await asyncio.sleep(0.02)
        _refused(await http.get("/v1/fleet/status", headers=bearer(key)), 401)


async def test_unknown_keys_cannot_hammer_the_database(
    client_with: ClientWith, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bytes] = []
    real = store.active_key

    async def counted(conn: Any, sha256: bytes) -> Any:
        asked.append(sha256)
        return await real(conn, sha256)

    monkeypatch.setattr(store, "active_key", counted)
    async with client_with() as http:
        one = generate((Scope.ADMIN,))
        for _ in range(20):  # the same unknown key: asked about once
            _refused(await http.get("/v1/fleet/status", headers=bearer(one)), 401)
        assert len(asked) == 1
        began = time.monotonic()
        for _ in range(200):  # a new unknown key each time: within the lookup budget
            _refused(
                await http.get("/v1/fleet/status", headers=bearer(generate((Scope.ADMIN,)))), 401
            )
        # The burst, and the refill over the time the requests took (longer on a loaded machine).
        refill = math.ceil(cache.LOOKUPS.per_second * (time.monotonic() - began))
        assert len(asked) <= 1 + cache.LOOKUPS.burst + refill + 1


def _keys(args: list[str], database_url: str) -> Any:
    return CliRunner().invoke(cli, ["keys", *args], env={"DATABASE_URL": database_url})


async def test_keys_create_list_and_revoke(
    database_url: str, client_with: ClientWith, tmp_path: Path
) -> None:
    created = await asyncio.to_thread(
        _keys,
        ["create", "--scope", "read", "--scope", "metrics", "--name", "grafana"],
        database_url,
    )
    assert created.exit_code == 0, created.output
    text = created.stdout.strip()
    key_id = text.split("_")[1]
    assert re.fullmatch(r"ee_[0-9a-f]{12}_\S{43}", text)
    assert f"key {key_id} (read, metrics) created; it is not shown again" in created.stderr
    device = await asyncio.to_thread(_keys, ["create", "--device", "M-9"], database_url)
    assert device.exit_code == 0, device.output
    listed = await asyncio.to_thread(_keys, ["list"], database_url)
    assert listed.exit_code == 0, listed.output
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith(key_id)]
    assert line.split()[1:3] == ["read,metrics", "-"] and line.endswith("grafana")
    assert any(row.split()[1:3] == ["ingest", "M-9"] for row in listed.stdout.splitlines())
    assert text not in listed.output

    async with client_with() as http:
        assert (await http.get("/v1/fleet/status", headers=bearer(text))).status_code == 200
        revoked = await asyncio.to_thread(_keys, ["revoke", key_id], database_url)
        assert revoked.exit_code == 0, revoked.output
        assert revoked.stdout.startswith(f"key {key_id} revoked (at ")
        revoked_at = time.monotonic()
        while (await http.get("/v1/fleet/status", headers=bearer(text))).status_code == 200:
            assert time.monotonic() - revoked_at < 6, "still accepted (default refresh: 2 s)"
            await asyncio.sleep(0.05)
        _refused(await http.get("/v1/fleet/status", headers=bearer(text)), 401)
    listed = await asyncio.to_thread(_keys, ["list"], database_url)
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith(key_id)]
    assert re.match(r"\d{4}-\d\d-\d\dT", line.split()[4])  # the revocation time

    unknown = await asyncio.to_thread(_keys, ["revoke", "0123456789ab"], database_url)
    assert unknown.exit_code == 1 and unknown.stderr == "error: no key with id '0123456789ab'\n"
    bound_admin = await asyncio.to_thread(
        _keys, ["create", "--scope", "admin", "--device", "M-9"], database_url
    )
    assert bound_admin.exit_code == 2 and "ingest scope only" in bound_admin.stderr


def test_clients_find_the_key_given_else_the_environment_else_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENERGY_API_KEY", raising=False)
    assert keyfile.find(None, tmp_path) is None
    path = keyfile.write(tmp_path / "data", "ee_file")
    assert path.stat().st_mode & 0o777 == 0o600
    assert keyfile.find(None, tmp_path / "data") == "ee_file"
    monkeypatch.setenv("ENERGY_API_KEY", "ee_env")
    assert keyfile.find(None, tmp_path / "data") == "ee_env"
    assert keyfile.find("ee_given", tmp_path / "data") == "ee_given"
    assert keyfile.headers(None) == {}


async def test_simulate_sends_the_key_and_stops_on_a_refused_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The simulator's client with a key sends; with a refused key it gives up at once."""
    from datetime import UTC, datetime

    from energy_engine.simulate.fleet import Fleet, FleetConfig, floor_minute
    from energy_engine.simulate.send import GaveUp, simulate

    end = floor_minute(datetime.now(UTC))
    fleet = Fleet(FleetConfig(meters=1, vehicles=1, seed=1), end - timedelta(minutes=5))
    stats = await simulate(client, fleet, end=end)
    assert stats.accepted == 12 and stats.rejected == 0 and not stats.first_error
    async with app_client(app, headers=bearer(KEYS.never_stored)) as stranger:
        with pytest.raises(GaveUp, match="401"):
            await simulate(stranger, Fleet(FleetConfig(meters=1, vehicles=1), end), end=end)


def test_keys_on_a_new_database_migrate_it_first(postgres_url: str) -> None:
    name = f"keys_new_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(postgres_url, f"CREATE DATABASE {name}"))
    try:
        url = with_database(postgres_url, name)
        created = _keys(["create", "--scope", "admin"], url)
        assert created.exit_code == 0, created.output
        listed = _keys(["list"], url)
        assert listed.stdout.splitlines()[1].split()[1] == "admin"
    finally:
        asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

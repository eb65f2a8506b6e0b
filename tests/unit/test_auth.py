"""API keys without a database: their format, the route→scope rules, the token bucket, the
default limits, and the middleware's answers for keys a worker already holds."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from fastapi.routing import APIRoute

from energy_engine.asgi import Message, Receive, Scope, Send
from energy_engine.auth.cache import ActiveKey, KeyCache
from energy_engine.auth.keys import Scope as KeyScope
from energy_engine.auth.keys import digest, generate, key_id, well_formed
from energy_engine.auth.limits import TokenBucket, limit_for
from energy_engine.auth.middleware import Auth, RouteScopes, scope_needed
from energy_engine.routing import LEAN_ROUTES
from energy_engine.settings import RateLimit, Settings

SETTINGS = Settings(_env_file=None, database_url="postgresql://nobody@127.0.0.1:1/none")


def test_a_key_is_prefixed_random_and_names_its_id() -> None:
    one, other = generate((KeyScope.INGEST,)), generate((KeyScope.INGEST,))
    assert one.text.startswith("ee_") and one.text != other.text
    assert well_formed(one.text.encode())
    assert key_id(one.text) == one.id and len(one.id) == 12
    assert one.sha256 == digest(one.text.encode()) and len(one.sha256) == 32
    assert one.text.encode() not in one.sha256


@pytest.mark.parametrize(
    "text",
    ["", "ee_", "nope", "ee_0123456789ab", "xx_0123456789ab_" + "A" * 43, "ee_0123456789ab_short"],
)
def test_text_that_is_no_key_is_malformed(text: str) -> None:
    assert not well_formed(text.encode())
    assert key_id(text) is None


@pytest.mark.parametrize(
    ("method", "path", "tags", "needed"),
    [
        ("POST", "/v1/ingest", ["ingest"], KeyScope.INGEST),
        ("GET", "/v1/fleet/status", ["status"], KeyScope.READ),
        ("HEAD", "/v1/fleet/status", ["status"], KeyScope.READ),
        ("POST", "/v1/assignments", ["assignments"], KeyScope.ADMIN),
        ("GET", "/metrics", [], KeyScope.METRICS),
    ],
)
def test_the_scope_a_route_needs(method: str, path: str, tags: list[str], needed: KeyScope) -> None:
    assert scope_needed(method, path, tags) is needed


async def _endpoint() -> None: ...


def test_route_scopes_find_fixed_and_parameterised_paths() -> None:
    routes = [
        *(route.declared for route in LEAN_ROUTES),
        APIRoute("/v1/vehicles/{vehicleId}/status", _endpoint, methods=["GET"]),
        APIRoute("/v1/assignments", _endpoint, methods=["POST"]),
    ]
    table = RouteScopes(routes)
    assert table.scope_for("POST", "/v1/ingest/meter") is KeyScope.INGEST
    assert table.scope_for("GET", "/v1/analytics/performance/V-1") is KeyScope.READ
    assert table.scope_for("HEAD", "/v1/vehicles/V-1/status") is KeyScope.READ
    assert table.scope_for("POST", "/v1/assignments") is KeyScope.ADMIN
    assert table.scope_for("GET", "/metrics") is KeyScope.METRICS  # whoever serves it
    # No route: any valid key (the app then answers 404 or 405).
    assert table.scope_for("DELETE", "/v1/assignments") is None
    assert table.scope_for("GET", "/v1/nowhere") is None


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(RateLimit(2, 3), now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token takes half a second
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(200.0) == 0.0  # never more than the burst saved up
    assert [bucket.take(200.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_the_default_ingest_limit_never_limits_a_10000_device_fleet_on_one_key() -> None:
    """10,000 devices at one reading a minute, all at the top of the minute (the worst case),
    through one shared key, on one worker, for an hour."""
    limit = limit_for(frozenset({KeyScope.INGEST}), None, SETTINGS)
    assert limit is not None
    bucket = TokenBucket(limit, now=0.0)
    for minute in range(60):
        for device in range(10_000):
            assert bucket.take(minute * 60.0 + device * 1e-5) == 0.0


def test_the_default_device_limit_leaves_room_for_a_backlog() -> None:
    limit = limit_for(frozenset({KeyScope.INGEST}), "M-1", SETTINGS)
    assert limit is not None and limit == SETTINGS.rate_limit_device
    bucket = TokenBucket(limit, now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(60))  # a retry backlog of an hour
    assert bucket.take(0.0) > 0.0


def test_a_key_gets_its_most_generous_scopes_limit() -> None:
    assert limit_for(frozenset({KeyScope.ADMIN}), None, SETTINGS) is None
    assert limit_for(frozenset({KeyScope.READ, KeyScope.ADMIN}), None, SETTINGS) is None
    both = limit_for(frozenset({KeyScope.READ, KeyScope.INGEST}), None, SETTINGS)
    assert both == SETTINGS.rate_limit_ingest


class _Downstream:
    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)


async def _call(
    auth: Auth, method: str, path: str, key: str | None
) -> tuple[int, Any, dict[str, str]]:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("a refusal reads no body")

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await auth(scope, receive, send)
    if not sent:
        return 0, None, {}
    head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], orjson.loads(sent[1]["body"]), head


def _auth(keys: dict[str, ActiveKey]) -> tuple[Auth, _Downstream]:
    cache = KeyCache(SETTINGS)
    cache.by_hash = {digest(text.encode()): key for text, key in keys.items()}
    downstream = _Downstream()
    routes = [route.declared for route in LEAN_ROUTES]
    return Auth(downstream, cache, routes, open_paths={"/health/live"}), downstream


async def test_a_known_key_passes_with_its_id_and_device_in_the_scope() -> None:
    key = generate((KeyScope.INGEST,), device_id="M-1")
    active = ActiveKey(key.id, frozenset(key.scopes), "M-1", None)
    auth, downstream = _auth({key.text: active})
    assert (await _call(auth, "POST", "/v1/ingest", key.text))[0] == 0
    (scope,) = downstream.scopes
    assert scope["energy.key_id"] == key.id and scope["energy.device_id"] == "M-1"
    assert key.text not in repr(scope["energy.key_id"])


async def test_refusals_are_json_with_a_bearer_challenge() -> None:
    key = generate((KeyScope.METRICS,))
    auth, downstream = _auth({key.text: ActiveKey(key.id, frozenset(key.scopes), None, None)})
    status, body, headers = await _call(auth, "POST", "/v1/ingest", None)
    assert status == 401 and body["error"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    status, body, headers = await _call(auth, "POST", "/v1/ingest", key.text)
    assert status == 403 and body["error"] == "forbidden" and "'ingest'" in body["message"]
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert (await _call(auth, "GET", "/health/live", None))[0] == 0  # open
    assert len(downstream.scopes) == 1 and "energy.key_id" not in downstream.scopes[0]


async def test_a_key_past_its_limit_gets_429_with_retry_after() -> None:
    key = generate((KeyScope.INGEST,))
    bucket = TokenBucket(RateLimit(0.5, 1), time.monotonic())
    auth, _ = _auth({key.text: ActiveKey(key.id, frozenset(key.scopes), None, bucket)})
    assert (await _call(auth, "POST", "/v1/ingest", key.text))[0] == 0
    status, body, headers = await _call(auth, "POST", "/v1/ingest", key.text)
    assert status == 429 and body["error"] == "rate_limited"
    assert headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("engine.example", False),
    ],
)
def test_without_auth_serve_listens_on_loopback_only(host: str, loopback: bool) -> None:
    from energy_engine.cli import _loopback

    assert _loopback(host) is loopback

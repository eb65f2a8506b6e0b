"""`Auth`: every request but the open routes carries `Authorization: Bearer <key>` with the
scope its route needs, within its key's rate limit; otherwise it is answered here, before any
handler runs or any body is read.

Which scope a route needs follows from the one routing table (`routing.served_routes`), so a
new route is guarded the day it is added:
- the ingest routes (tag `ingest`): `ingest`;
- `GET /metrics`: `metrics` (also when it is served outside the routing table);
- any other GET: `read`;
- any other method (writing assignments): `admin`.
`admin` may do everything. A path or method no route serves needs any valid key: an
authorized caller still gets the 404 or 405, anybody else a 401, so unknown paths are denied
by default and the route table is not revealed to strangers.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from typing import Any

from fastapi.routing import APIRoute

from energy_engine.asgi import ASGIApp, Receive, Scope, Send, answer
from energy_engine.auth.cache import KeyCache
from energy_engine.auth.keys import Scope as KeyScope
from energy_engine.auth.keys import digest, well_formed
from energy_engine.errors import ApiError, error_json

METRICS_PATH = "/metrics"
# Open whatever the settings: load balancers and orchestrators probe these without a key.
HEALTH_PATHS = frozenset({"/health/live", "/health/ready"})
REALM = 'Bearer realm="energy-engine"'

# What `scope_for` answers for a path or method no route serves: any valid key.
ANY_KEY = None
Needed = KeyScope | None


def scope_needed(method: str, path: str, tags: Iterable[Any]) -> KeyScope:
    """The scope a route needs (the rules of this module's docstring)."""
    if "ingest" in tags:
        return KeyScope.INGEST
    if path == METRICS_PATH:
        return KeyScope.METRICS
    if method in ("GET", "HEAD"):
        return KeyScope.READ
    return KeyScope.ADMIN


class RouteScopes:
    """The scope each (method, path) needs, found by one dict lookup for paths without
    parameters and by their compiled patterns for the others."""

    def __init__(self, routes: Iterable[APIRoute]) -> None:
        metrics = dict.fromkeys(("GET", "HEAD"), KeyScope.METRICS)
        self.fixed: dict[str, dict[str, KeyScope]] = {METRICS_PATH: metrics}
        self.patterns: list[tuple[re.Pattern[str], dict[str, KeyScope]]] = []
        for route in routes:
            methods = {
                method: scope_needed(method, route.path, route.tags or ())
                for method in route.methods or ()
            }
            if "GET" in methods:  # Starlette answers HEAD for every GET route
                methods.setdefault("HEAD", methods["GET"])
            if "{" in route.path:
                self.patterns.append((route.path_regex, methods))
            else:
                self.fixed.setdefault(route.path, {}).update(methods)

    def scope_for(self, method: str, path: str) -> Needed:
        """The scope `method` on `path` needs; ANY_KEY when no route serves it."""
        methods = self.fixed.get(path)
        if methods is None:
            for pattern, candidate in self.patterns:
                if pattern.match(path):
                    methods = candidate
                    break
            else:
                return ANY_KEY
        return methods.get(method, ANY_KEY)


def _refusal(error: str, message: str, challenge: str) -> tuple[bytes, dict[str, str]]:
    return error_json(ApiError(401, error, message)), {"WWW-Authenticate": challenge}


_INVALID_TOKEN = f'{REALM}, error="invalid_token"'
MISSING = _refusal("unauthorized", "send an API key: Authorization: Bearer <key>", REALM)
NOT_BEARER = _refusal(
    "unauthorized", "the Authorization header must read: Bearer <key>", _INVALID_TOKEN
)
MALFORMED = _refusal("unauthorized", "the API key is malformed", _INVALID_TOKEN)
UNKNOWN = _refusal("unauthorized", "the API key is unknown or revoked", _INVALID_TOKEN)


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | tuple[bytes, dict[str, str]]:
    """The key of the Authorization header, or the refusal for its absence or shape."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, key = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return NOT_BEARER
            key = key.strip()
            return key if well_formed(key) else MALFORMED
    return MISSING


class Auth:
    """The API-key check in front of the routes (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyCache,
        routes: Iterable[APIRoute],
        open_paths: Iterable[str],
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.keys = keys
        self.routes = RouteScopes(routes)
        self.open = frozenset(open_paths)
        self.open_prefixes = open_prefixes  # e.g. the docs' own assets, under /docs/

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self.open or path.startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        key = _bearer(scope["headers"])
        if isinstance(key, tuple):
            await answer(send, 401, *key)
            return
        sha256 = digest(key)
        found = self.keys.by_hash.get(sha256)
        if found is None:
            found = await self.keys.lookup(sha256, scope["app"].state.pool)
            if found is None:
                await answer(send, 401, *UNKNOWN)
                return
        needed = self.routes.scope_for(scope["method"], path)
        if needed is not None and not found.allows(needed):
            await _forbidden(send, needed)
            return
        if found.bucket is not None:
            wait = found.bucket.take(time.monotonic())
            if wait > 0.0:
                await _too_many(send, wait)
                return
        scope["energy.key_id"] = found.id
        if found.device_id is not None:
            scope["energy.device_id"] = found.device_id
        await self.app(scope, receive, send)


async def _forbidden(send: Send, needed: KeyScope) -> None:
    error = ApiError(403, "forbidden", f"this API key lacks the {needed.value!r} scope")
    challenge = f'{REALM}, error="insufficient_scope", scope="{needed.value}"'
    await answer(send, 403, error_json(error), {"WWW-Authenticate": challenge})


async def _too_many(send: Send, wait: float) -> None:
    seconds = max(1, math.ceil(wait))
    error = ApiError(
        429, "rate_limited", f"too many requests with this API key; retry in {seconds} s"
    )
    await answer(send, 429, error_json(error), {"Retry-After": str(seconds)})


_ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
_REFUSALS = {
    "401": "No API key, or one malformed, unknown or revoked",
    "403": "The API key lacks the scope this route needs, or writes another device's readings",
    "429": "Too many requests with this API key: retry after Retry-After seconds",
}


def declare_security(doc: dict[str, Any], open_paths: Iterable[str]) -> None:
    """Add the bearer scheme to an OpenAPI document: each operation outside `open_paths`
    names the scope it needs (OpenAPI 3.1 lists roles for non-OAuth schemes so) and the
    refusals it may answer."""
    scheme = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`ee_…`) made by `energy-engine keys create`; the scope "
        "listed on each operation, or `admin`, is needed.",
    }
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = scheme
    opened = set(open_paths)
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if path in opened:
                operation["security"] = []
                continue
            needed = scope_needed(method.upper(), path, operation.get("tags", ()))
            operation["security"] = [{"apiKey": [needed.value]}]
            responses = operation.setdefault("responses", {})
            for code, text in _REFUSALS.items():
                responses.setdefault(
                    code,
                    {"description": text, "content": {"application/json": {"schema": _ERROR_BODY}}},
                )

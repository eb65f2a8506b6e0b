"""`RequestLog`, the outermost middleware: gives every HTTP request an id, echoes it in
`X-Request-ID`, times the request into the latency histogram by route template, and writes one
log line for it.

Every log line written while the request is answered carries its id (`logs.REQUEST_ID`, read
by the formatters). uvicorn runs each request in its own task, so the id set here is seen by
everything the request awaits, and by nothing else.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from energy_engine.asgi import ASGIApp, Message, Receive, Scope, Send, answer
from energy_engine.errors import ApiError, error_json
from energy_engine.observability import metrics
from energy_engine.observability.logs import FIELDS, REQUEST_ID

log = logging.getLogger("energy_engine.request")

HEADER = b"x-request-id"
# A client's id is taken when it is 1 to 128 visible ASCII characters, else one is made.
_GIVEN_ID = re.compile(rb"[\x21-\x7e]{1,128}")
UNMATCHED = "unmatched"  # the route label of a path no route declares
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_INTERNAL = error_json(ApiError(500, "internal_error", "the engine failed; this is a bug"))


def _ids() -> Iterator[str]:
    """Ids unique across processes and restarts: a random prefix per process, then a
    counter (cheaper than a uuid4 a request)."""
    prefix = secrets.token_hex(6)
    return (f"{prefix}{n:08x}" for n in itertools.count(1))


_next_id = _ids()
os.register_at_fork(after_in_child=lambda: globals().update(_next_id=_ids()))


def request_id(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is acceptable, else a new id."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if _GIVEN_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return next(_next_id)


class RouteTemplates:
    """Finds the declared route of a path, for a request no router has matched (one refused
    before routing, or a path nothing declares): by the whole path, by its parent when its last
    segment is the one parameter, else by each route's pattern."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.fixed: dict[str, str] = {}
        self.by_parent: dict[str, str] = {}
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        for route in routes:
            path: str | None = getattr(route, "path", None)
            regex: re.Pattern[str] | None = getattr(route, "path_regex", None)
            if path is None or regex is None:
                continue
            parent, _, last = path.rpartition("/")
            if "{" not in path:
                self.fixed[path] = path
            elif "{" not in parent and last.startswith("{") and ":" not in last:
                self.by_parent[parent] = path
            else:
                self.patterns.append((regex, path))

    def find(self, path: str) -> str:
        """The template of `path`, or UNMATCHED."""
        found = self.fixed.get(path)
        if found is not None:
            return found
        parent, _, last = path.rpartition("/")
        if last and (found := self.by_parent.get(parent)) is not None:
            return found
        for regex, template in self.patterns:
            if regex.match(path):
                return template
        return UNMATCHED


class RequestLog:
    """See the module docstring. `lean` are the routes answered in front of FastAPI (declared
    for their paths only); FastAPI's own are read from the app on the first request."""

    def __init__(self, app: ASGIApp, *, lean: Sequence[APIRoute], log_requests: bool) -> None:
        self.app = app
        self.lean = lean
        self.log_requests = log_requests
        self.templates: RouteTemplates | None = None
        self.latency: dict[tuple[str, str, int], Any] = {}

    def route(self, scope: Scope) -> str:
        """The template of the request's route (FastAPI records the one it matched)."""
        matched = scope.get("route")
        if isinstance(matched, APIRoute):
            return matched.path
        if self.templates is None:
            app_routes = getattr(scope.get("app"), "routes", ())  # FastAPI sets scope["app"]
            self.templates = RouteTemplates([*self.lean, *app_routes])
        return self.templates.find(scope["path"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        token = REQUEST_ID.set(rid)
        header = (HEADER, rid.encode("ascii"))
        status = 0
        bytes_in = bytes_out = 0

        async def counted_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            bytes_in += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            else:
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_id)
        except Exception:
            # A bug: FastAPI's routes have answered 500 already, a lean handler has not. The
            # traceback is logged here, with the request's id, and not raised on to uvicorn
            # (which would log it again without the id).
            log.exception("unhandled error")
            if status == 0:
                await answer(send_with_id, 500, _INTERNAL)
        finally:
            seconds = time.perf_counter() - started
            method: str = scope["method"]
            if method not in _METHODS:
                method = "other"  # labels and this cache stay bounded whatever clients send
            route = self.route(scope)
            key = (route, method, status)
            child = self.latency.get(key)
            if child is None:
                child = self.latency[key] = metrics.REQUEST_SECONDS.labels(
                    route, method, str(status)
                )
            child.observe(seconds)
            if self.log_requests and log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {
                    "method": method,
                    "route": route,
                    "path": scope["path"][:256],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "client": (scope.get("client") or (None,))[0],
                    "key_id": scope.get("energy.key_id"),
                }
                log.info("request", extra={FIELDS: fields})
            REQUEST_ID.reset(token)

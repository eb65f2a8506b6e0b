"""The plain-ASGI plumbing of the lean handlers (ingest and the per-vehicle report), which
answer their hot paths in front of FastAPI (see `routing`), and of the body limit of the
routes FastAPI serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute

from energy_engine.errors import ApiError, error_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


async def answer(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """A complete JSON response."""
    raw_headers = list(_JSON_HEADERS)
    raw_headers.append((b"content-length", str(len(body)).encode()))
    for name, value in (headers or {}).items():
        raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Guards the routes of `routers` that take a JSON body (their paths have no parameters;
    the lean ingest handlers have their own limits): 415 unless the body is JSON, and 413 as
    soon as it exceeds `limit` bytes, by its Content-Length before anything is read, or while
    a chunked body streams in."""

    def __init__(self, app: ASGIApp, limit: int, routers: Sequence[APIRouter]) -> None:
        self.app = app
        self.limit = limit
        self.paths = {
            (method, route.path)
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute) and route.body_field is not None
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"application/json").split(b";")[0]
        if media_type.strip().lower() != b"application/json":
            await _refuse(send, 415, "unsupported_media_type", "send the body as application/json")
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _refuse(send, 413, "body_too_large", f"the body exceeds {self.limit} bytes")
            return
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.limit:
                # An HTTPException: FastAPI passes it on from inside body reading.
                raise ApiError(413, "body_too_large", f"the body exceeds {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, status: int, error: str, message: str) -> None:
    await answer(send, status, error_json(ApiError(status, error, message)))

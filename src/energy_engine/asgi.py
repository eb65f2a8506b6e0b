"""The plain-ASGI plumbing of the lean handlers (ingest and the per-vehicle report), which
answer their hot paths in front of FastAPI; see `ingest.endpoint` for why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


async def answer(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """A complete JSON response."""
    raw_headers = list(_JSON_HEADERS)
    raw_headers.append((b"content-length", str(len(body)).encode()))
    for name, value in (headers or {}).items():
        raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})

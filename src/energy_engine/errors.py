"""Error responses a device integrator can act on: a code, a message, and per-item details."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException


class ErrorItem(BaseModel):
    """One problem: which item of a batch (null for a single reading), which field, and why."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    index: int | None = None
    field: str | None = None
    reason: str


class ErrorBody(BaseModel):
    """The body of every error answer (4xx and 503)."""

    error: str
    message: str
    errors: list[ErrorItem] = []


class ApiError(HTTPException):
    """Raised anywhere in a request to answer with `status` and an `ErrorBody`. An
    HTTPException, so that FastAPI passes it on unchanged even from inside body reading."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        errors: list[ErrorItem] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.status = status
        self.body = ErrorBody(error=error, message=message, errors=errors or [])
        self.headers = headers


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The error answers every route may give, for the OpenAPI document.
Responses = dict[int | str, dict[str, Any]]
INVALID: Responses = {422: _documented("Invalid parameters or body: each problem by field")}
UNAVAILABLE: Responses = {
    503: _documented("The database is unavailable or too slow: retry after Retry-After seconds")
}
UNKNOWN_DEVICE: Responses = {404: _documented("Unknown device")}
BODY_REFUSED: Responses = {
    400: _documented("Malformed JSON"),
    413: _documented("Body too large"),
    415: _documented("Not application/json"),
}


def not_found(what: str, ident: str) -> ApiError:
    """404 for an unknown device."""
    return ApiError(404, "not_found", f"{what} {ident!r} is unknown")


def invalid_request(field: str, reason: str, message: str) -> ApiError:
    """422 for one bad query parameter."""
    return ApiError(422, "invalid_request", message, [ErrorItem(field=field, reason=reason)])


def invalid(items: list[ErrorItem]) -> ApiError:
    """422 for a request's parameters or body, each problem by field."""
    message = (
        f"{items[0].field}: {items[0].reason}"
        if len(items) == 1 and items[0].field
        else "the request is invalid"
    )
    return ApiError(422, "invalid_request", message, items)


def not_allowed(method: str, allowed: str) -> ApiError:
    """405 for a method the path does not take; `allowed` is the Allow header."""
    return ApiError(
        405, "method_not_allowed", f"{method} is not allowed here", headers={"Allow": allowed}
    )


def error_json(error: ApiError) -> bytes:
    """The error's JSON body, as every error answer carries it (FastAPI's handlers below and
    the lean handlers in front of FastAPI)."""
    return error.body.model_dump_json(by_alias=True).encode()


def _render(exc: ApiError) -> Response:
    return Response(
        error_json(exc),
        status_code=exc.status,
        headers=exc.headers,
        media_type="application/json",
    )


def reason_of(detail: ErrorDetails) -> str:
    """Pydantic's message for one problem, without the "Value error, " of our own checks."""
    return detail["msg"].removeprefix("Value error, ")


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    # FastAPI prefixes the part of the request ("query", "path", "body").
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("query", "path", "body") else loc
    return ".".join(str(p) for p in parts) or None


# Error codes of the answers Starlette gives by itself (no route, wrong method, …).
_STARLETTE_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    """Render `ApiError`, Starlette's own HTTP errors and FastAPI's parameter validation in
    the one error shape."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _render(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = exc.status_code
        error = _STARLETTE_CODES.get(code) or HTTPStatus(code).phrase.lower().replace(" ", "_")
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"{request.method} is not allowed here",
        }.get(code, str(exc.detail))
        return _render(ApiError(code, error, message, headers=exc.headers))

    async def on_request_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details: list[dict[str, Any]] = list(exc.errors())
        if any(d["type"] == "json_invalid" for d in details):
            return _render(ApiError(400, "malformed_json", "the body is not valid JSON"))
        items = [
            ErrorItem(field=_field_of(tuple(d["loc"])), reason=reason_of(d))  # type: ignore[arg-type]
            for d in details
        ]
        return _render(invalid(items))

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        # A bug, not the client's fault: the client still gets the one error shape (the
        # server log keeps the traceback).
        return _render(ApiError(500, "internal_error", "the engine failed; this is a bug"))

    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)


# --- The database unavailable or out of time (hardening) -----------------------------------
# One place decides which exceptions mean "PostgreSQL cannot answer now" rather than a bug:
# FastAPI's handlers below, the lean ASGI handlers (ingest, analytics), the group-commit writer,
# readiness and the background tasks all ask `outage` / `unavailable`.
#
# Both kinds answer 503 with Retry-After, never 504: the engine is the service the client
# talks to, not a gateway, and 503 + Retry-After is the one answer a client has to handle
# for "not now" (the write queue being full answers the same). The error code tells them
# apart: `database_unavailable` (retry later) and `database_timeout` (the statement ran out of
# `statement_timeout` or `temp_file_limit`: retrying the same request may time out again;
# ask for a shorter window).

_UNAVAILABLE_POSTGRES: tuple[tuple[type[Exception], str], ...] = (
    (asyncpg.CannotConnectNowError, "the server is starting up or shutting down"),
    (asyncpg.AdminShutdownError, "the server is shutting down"),
    (asyncpg.CrashShutdownError, "the server crashed"),
    (asyncpg.TooManyConnectionsError, "too many connections"),
    (asyncpg.PostgresConnectionError, "the connection was lost"),
    (asyncpg.exceptions.OperatorInterventionError, "an operator cancelled the session"),
    (asyncpg.InsufficientResourcesError, "the server is out of resources"),
)


@dataclass(frozen=True, slots=True)
class Outage:
    """Why a database call failed without the engine being at fault."""

    timeout: bool  # the statement ran out of time or temp space (else: unreachable)
    reason: str  # one readable line, e.g. "connection refused (…)"


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{text[:160]} ({type(exc).__name__})" if text else type(exc).__name__


def outage(exc: BaseException) -> Outage | None:
    """The outage `exc` stands for, or None when it is an ordinary error (a bug: a 500)."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return Outage(True, "the statement ran longer than statement_timeout")
    if isinstance(exc, asyncpg.ConfigurationLimitExceededError):  # temp_file_limit
        return Outage(True, "the statement exceeded temp_file_limit")
    if isinstance(exc, TimeoutError):  # connect, acquire or command timeout (client side)
        return Outage(False, "timed out waiting for the database")
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError):  # TCP or unix socket
        return Outage(False, f"connection refused: {_detail(exc)}")
    if isinstance(exc, OSError):
        return Outage(False, f"connection failed: {_detail(exc)}")
    for kind, reason in _UNAVAILABLE_POSTGRES:
        if isinstance(exc, kind):
            return Outage(False, f"{reason}: {_detail(exc)}")
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return Outage(False, f"the connection was closed: {_detail(exc)}")
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # Seen when the server ends an idle pooled connection (a shutdown's FATAL message)
        # just as a statement is sent on it: the protocol is still consuming the error. The
        # connection is gone either way; the request can be retried on a new one.
        return Outage(False, f"the connection broke mid-operation: {_detail(exc)}")
    return None


def unavailable(exc: BaseException, retry_after: timedelta) -> ApiError | None:
    """The 503 answering `exc` when it is an outage (logged, at most one line per interval);
    None when it is not one. 503, not 504, for a statement out of time too: the engine is the
    service, not a gateway, and 503 + Retry-After is the one "not now" clients handle (the
    error code tells `database_timeout` from `database_unavailable`)."""
    found = outage(exc)
    if found is None:
        return None
    log_outage("request", found)
    headers = {"Retry-After": str(max(1, round(retry_after.total_seconds())))}
    if found.timeout:
        return ApiError(
            503,
            "database_timeout",
            f"the query did not finish in time ({found.reason}); ask for a shorter window or "
            "retry later",
            headers=headers,
        )
    return ApiError(
        503,
        "database_unavailable",
        f"the database is unavailable ({found.reason}); retry later",
        headers=headers,
    )


_log = logging.getLogger("energy_engine.outage")
_OUTAGE_LOG_EVERY_S = 10.0
_logged_at: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def log_outage(where: str, found: Outage) -> None:
    """One warning line (never a traceback) per `where` and 10 s: an outage fails every
    request, and a line each would bury the log."""
    now = time.monotonic()
    if now - _logged_at.get(where, -_OUTAGE_LOG_EVERY_S) < _OUTAGE_LOG_EVERY_S:
        _suppressed[where] = _suppressed.get(where, 0) + 1
        return
    more = _suppressed.pop(where, 0)
    _logged_at[where] = now
    _log.warning(
        "database %s (%s)%s",
        "timeout" if found.timeout else "unavailable",
        f"{where}: {found.reason}",
        f"; {more} more since the last line" if more else "",
    )


def install_outage_handlers(app: FastAPI) -> None:
    """Answer outages leaking from FastAPI routes with the 503 of `unavailable`; anything
    else raised by the database driver stays a 500."""

    async def on_database_error(request: Request, exc: Exception) -> Response:
        settings = request.app.state.settings
        error = unavailable(exc, settings.unavailable_retry_after)
        if error is None:
            raise exc
        return _render(error)

    for kind in (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(kind, on_database_error)

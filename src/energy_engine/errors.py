"""Error responses a device integrator can act on: a code, a message, and per-item details."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

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
        message = (
            f"{items[0].field}: {items[0].reason}"
            if len(items) == 1 and items[0].field
            else "the request is invalid"
        )
        return _render(ApiError(422, "invalid_request", message, items))

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        # A bug, not the client's fault: the client still gets the one error shape (the
        # server log keeps the traceback).
        return _render(ApiError(500, "internal_error", "the engine failed; this is a bug"))

    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)

"""Error responses a device integrator can act on: a code, a message, and per-item details."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ErrorItem(BaseModel):
    """One problem: which item of a batch (null for a single reading), which field, and why."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    index: int | None = None
    field: str | None = None
    reason: str


class ErrorBody(BaseModel):
    """The body of every 4xx answer."""

    error: str
    message: str
    errors: list[ErrorItem] = []


class ApiError(Exception):
    """Raised anywhere in a request to answer with `status` and an `ErrorBody`."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        errors: list[ErrorItem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, message=message, errors=errors or [])
        self.headers = headers


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


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    # FastAPI prefixes the part of the request ("query", "path", "body").
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("query", "path", "body") else loc
    return ".".join(str(p) for p in parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Render `ApiError` and FastAPI's own parameter validation in the one error shape."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _render(exc)

    async def on_request_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details: list[dict[str, Any]] = list(exc.errors())
        items = [ErrorItem(field=_field_of(tuple(d["loc"])), reason=d["msg"]) for d in details]
        return _render(ApiError(422, "invalid_request", "the request is invalid", items))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)

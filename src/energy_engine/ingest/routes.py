"""The declarations of the ingest routes, which `ingest.endpoint` answers in front of FastAPI
(see `routing`): FastAPI builds their OpenAPI operations from these and never mounts them."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

from energy_engine.errors import ErrorBody
from energy_engine.ingest.models import IngestResult, Queued

SCHEMA_REF = "#/components/schemas/{model}"

_ERRORS = {
    400: "Malformed JSON or gzip",
    405: "Only POST is allowed",
    413: "Body or batch too large",
    415: "Neither JSON nor NDJSON, or an unsupported Content-Encoding",
    422: "Invalid readings: each problem by index (array position or NDJSON line) and field",
    503: (
        "Write queue full, the database unavailable, or (queue mode) the JetStream stream "
        "full or unreachable: retry after Retry-After seconds"
    ),
}


def _ref(model: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=model)}


async def _answered_in_front() -> None:
    """Never called: the route is not mounted."""


def _declare(path: str, item: str, summary: str) -> APIRoute:
    # The readings are read from the raw body (ingest.parse), so their schema is given here
    # rather than by a body parameter; `routing.openapi` adds the reading schemas.
    one_or_many = {"oneOf": [_ref(item), {"type": "array", "items": _ref(item), "minItems": 1}]}
    request_body: dict[str, Any] = {
        "required": True,
        "content": {
            "application/json": {"schema": one_or_many},
            "application/x-ndjson": {"schema": _ref(item)},
        },
    }
    return APIRoute(
        path,
        _answered_in_front,
        methods=["POST"],
        tags=["ingest"],
        summary=summary,
        description=(
            "One reading, a JSON array or NDJSON (one reading per line); all or nothing. "
            "Answered only once the readings are committed. A retried reading is counted as "
            "a duplicate and stored once. The body may be gzip-compressed "
            "(`Content-Encoding: gzip`). In queue mode (ENERGY_INGEST_MODE=queue) the answer "
            "is 202 once the readings are stored in the JetStream stream, and workers write "
            "them to PostgreSQL."
        ),
        operation_id="ingest_" + item,
        response_model=IngestResult,
        response_description="Committed",
        responses={
            202: {"model": Queued, "description": "Queue mode: stored in the durable queue"},
            **{code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()},
        },
        openapi_extra={"requestBody": request_body},
    )


READINGS = _declare("/v1/ingest", "AnyReading", "Store meter and vehicle readings (mixed)")
METER_READINGS = _declare("/v1/ingest/meter", "MeterReading", "Store meter readings")
VEHICLE_READINGS = _declare("/v1/ingest/vehicle", "VehicleReading", "Store vehicle readings")

"""The OpenAPI description of the ingest paths, which `ingest.endpoint` answers outside
FastAPI's router (see there why); this keeps the published contract complete."""

from __future__ import annotations

from typing import Any

from energy_engine.errors import ErrorBody
from energy_engine.ingest.models import IngestResult

SCHEMA_REF = "#/components/schemas/{model}"

_ERRORS = {
    "400": "Malformed JSON or gzip",
    "405": "Only POST is allowed",
    "413": "Body or batch too large",
    "415": "Neither JSON nor NDJSON, or an unsupported Content-Encoding",
    "422": "Invalid readings: each problem by index (array position or NDJSON line) and field",
    "503": "Write queue full, or the database unavailable: retry after Retry-After seconds",
}

_PATHS = {
    "/v1/ingest": ("AnyReading", "Store meter and vehicle readings (mixed)"),
    "/v1/ingest/meter": ("MeterReading", "Store meter readings"),
    "/v1/ingest/vehicle": ("VehicleReading", "Store vehicle readings"),
}


def _ref(model: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=model)}


def _operation(item: str, summary: str) -> dict[str, Any]:
    one_or_many = {"oneOf": [_ref(item), {"type": "array", "items": _ref(item), "minItems": 1}]}
    return {
        "tags": ["ingest"],
        "summary": summary,
        "description": (
            "One reading, a JSON array or NDJSON (one reading per line); all or nothing. "
            "Answered only once the readings are committed. A retried reading is counted as "
            "a duplicate and stored once. The body may be gzip-compressed "
            "(`Content-Encoding: gzip`)."
        ),
        "operationId": "ingest_" + item,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": one_or_many},
                "application/x-ndjson": {"schema": _ref(item)},
            },
        },
        "responses": {
            "200": {
                "description": "Committed",
                "content": {"application/json": {"schema": _ref("IngestResult")}},
            },
            **{
                code: {
                    "description": text,
                    "content": {"application/json": {"schema": _ref("ErrorBody")}},
                }
                for code, text in _ERRORS.items()
            },
        },
    }


def openapi_paths() -> dict[str, Any]:
    """Path items of the three ingest routes."""
    return {path: {"post": _operation(item, summary)} for path, (item, summary) in _PATHS.items()}


def openapi_schemas() -> dict[str, Any]:
    """The response schemas those path items refer to."""
    return {
        "IngestResult": IngestResult.model_json_schema(ref_template=SCHEMA_REF),
        "ErrorBody": ErrorBody.model_json_schema(ref_template=SCHEMA_REF),
    }

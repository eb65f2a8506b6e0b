"""POST /v1/ingest, /v1/ingest/meter and /v1/ingest/vehicle, answered in front of FastAPI
(see `routing`).

They take one reading per device per minute from the whole fleet, so their per-request cost
decides the single-reading throughput, and FastAPI's request path (Request object, dependency
resolution, response model, exception middleware) cost more than validating a reading and
committing it with group commit. This handler takes bytes in, validates them with the same
Pydantic `TypeAdapter`s, hands the readings to the group-commit writer and answers orjson
bytes; `ingest.routes` declares the routes for the OpenAPI document.

Bodies: JSON (one object or an array) or NDJSON (`application/x-ndjson`, validated line by
line as it streams in), optionally gzip-compressed (`Content-Encoding: gzip`, inflated
incrementally and bounded, so a small compressed body cannot inflate past the size limit).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from energy_engine.asgi import Receive, Scope, Send, answer
from energy_engine.errors import ApiError, ErrorItem, error_json, unavailable
from energy_engine.ingest.models import MeterReading, Queued, VehicleReading
from energy_engine.ingest.parse import ReadingParser
from energy_engine.ingest.writer import Overloaded, Writer
from energy_engine.observability import metrics
from energy_engine.settings import Settings

TRANSPORT = "http"  # in the metrics
JSON_TYPE = "application/json"  # also assumed when a request names no Content-Type
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class _Disconnected(Exception):
    """The client went away before its body arrived; nothing to answer."""


class IngestHandler:
    """Answers POST of readings of one `kind` (a reading model or the union of both)."""

    def __init__(self, kind: Any, settings: Settings) -> None:
        self.settings = settings
        self.parser = ReadingParser.for_type(kind, settings)
        # The stream of the route's readings in the metrics; a rejected mixed body's is unknown.
        self.stream = (
            "meter" if kind is MeterReading else "vehicle" if kind is VehicleReading else "unknown"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send, _: str) -> None:
        writer: Writer = scope["app"].state.writer
        try:
            readings, indexes = await _read_readings(
                self.parser, scope, receive, self.settings.max_body_bytes
            )
            device = scope.get("energy.device_id")  # set by auth for a device-bound key
            if device is not None:
                _only_device(device, readings, indexes)
            metrics.observe_batch(TRANSPORT, len(readings))
            meters = [r for r in readings if isinstance(r, MeterReading)]
            vehicles = [r for r in readings if isinstance(r, VehicleReading)]
            result = await writer.submit(meters, vehicles, TRANSPORT)
        except ApiError as error:  # the body refused: each item named, or the body whole
            rejected = len({item.index for item in error.body.errors}) or 1
            metrics.count_rejected(TRANSPORT, self.stream, rejected)
            await answer(send, error.status, error_json(error), error.headers)
            return
        except Overloaded as full:
            busy = ApiError(503, "overloaded", full.message)
            await answer(send, 503, error_json(busy), {"Retry-After": str(full.retry_after)})
            return
        except _Disconnected:
            return
        except Exception as exc:  # the database down: 503, as FastAPI's handlers answer
            down = unavailable(exc, self.settings.unavailable_retry_after)
            if down is None:
                raise
            await answer(send, down.status, error_json(down), down.headers)
            return
        if isinstance(result, Queued):  # queue mode: stored durably, not yet in PostgreSQL
            await answer(send, 202, orjson.dumps({"queued": result.queued}))
            return
        body = orjson.dumps({"accepted": result.accepted, "duplicates": result.duplicates})
        await answer(send, 200, body)


def _only_device(device: str, readings: list[Any], indexes: Sequence[int] | None) -> None:
    """403 naming every reading (by index) of another device than the key's `device`."""
    others = [
        ErrorItem(
            index=None if indexes is None else indexes[position],
            field="meterId" if isinstance(reading, MeterReading) else "vehicleId",
            reason=f"this API key may write readings of {device!r} only",
        )
        for position, reading in enumerate(readings)
        if (reading.meter_id if isinstance(reading, MeterReading) else reading.vehicle_id) != device
    ]
    if others:
        which = (
            "the reading belongs"
            if indexes is None
            else f"{len(others)} of the {len(readings)} readings belong"
        )
        message = f"{which} to another device than the API key's; nothing was stored"
        raise ApiError(403, "forbidden", message, others)


async def _read_readings(
    parser: ReadingParser[Any], scope: Scope, receive: Receive, limit: int
) -> tuple[list[Any], Sequence[int] | None]:
    """The readings of the body, and each one's index (array position or NDJSON line; None
    for a single reading)."""
    headers = _headers(scope)
    media_type = headers.get("content-type", JSON_TYPE).split(";")[0].strip().lower()
    is_ndjson = media_type in NDJSON_TYPES
    if not is_ndjson and media_type != JSON_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the readings as application/json or application/x-ndjson",
        )
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_encoding", "Content-Encoding may be gzip or identity")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = _body_chunks(receive, limit, gzip=encoding == "gzip")
    if is_ndjson:
        lines = parser.lines()
        async for chunk in chunks:
            lines.feed(chunk)
        return lines.close(), lines.indexes
    body: bytes | bytearray = b""
    async for chunk in chunks:
        if not body:
            body = chunk  # most bodies arrive in one piece: no copy
        else:
            if isinstance(body, bytes):
                body = bytearray(body)
            body += chunk
    readings = parser.parse(body)
    return readings, range(len(readings)) if body.lstrip()[:1] == b"[" else None


async def _body_chunks(receive: Receive, limit: int, *, gzip: bool) -> AsyncIterator[bytes]:
    """The body as it arrives, inflated when gzip; 413 as soon as it exceeds `limit` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        more = message.get("more_body", False)
        chunk: bytes = message.get("body", b"")
        if inflater is not None:
            try:
                # At most one byte past the limit: enough to know the body is too large.
                chunk = inflater.decompress(chunk, limit - size + 1)
            except zlib.error as exc:
                raise ApiError(400, "malformed_gzip", f"the gzip body is corrupt: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if inflater is not None and not more and not inflater.eof:
            raise ApiError(400, "malformed_gzip", "the gzip body is truncated")
        if chunk:
            yield chunk


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body exceeds {limit} bytes; split the batch")

"""From request bytes to validated readings, or a 4xx that names every bad item and field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Request
from pydantic import Field, TypeAdapter, ValidationError

from energy_engine.errors import ApiError, ErrorItem
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.settings import Settings

R = TypeVar("R", MeterReading, VehicleReading, MeterReading | VehicleReading)

_STREAM_TAGS = ("meter", "vehicle")


@dataclass(frozen=True, slots=True)
class ReadingParser(Generic[R]):
    """Validates one reading or a JSON array of them against one item type."""

    single: TypeAdapter[R]
    batch: TypeAdapter[list[R]]
    settings: Settings

    @classmethod
    def for_type(cls, item: Any, settings: Settings) -> ReadingParser[Any]:
        """A parser for `item` (a reading model or the polymorphic `AnyReading`)."""
        limits = Field(min_length=1, max_length=settings.max_batch_items)
        return cls(TypeAdapter(item), TypeAdapter(Annotated[list[item], limits]), settings)

    def parse(self, body: bytes) -> list[R]:
        """All readings of `body`, or an ApiError listing every problem found."""
        is_batch = body.lstrip()[:1] == b"["
        try:
            readings = (
                self.batch.validate_json(body) if is_batch else [self.single.validate_json(body)]
            )
        except ValidationError as exc:
            raise self._rejection(exc, is_batch) from None
        problems = self._out_of_time_range(readings, is_batch)
        if problems:
            raise _invalid(problems)
        return readings

    def _rejection(self, exc: ValidationError, is_batch: bool) -> ApiError:
        details = exc.errors(include_url=False, include_input=False)
        kinds = {d["type"] for d in details}
        if "json_invalid" in kinds:
            return ApiError(400, "malformed_json", details[0]["msg"])
        if is_batch and "too_long" in kinds:
            return ApiError(
                413,
                "batch_too_large",
                f"a batch holds at most {self.settings.max_batch_items} readings; split it",
            )
        if is_batch and "too_short" in kinds:
            return ApiError(422, "empty_batch", "the batch holds no readings")
        items = []
        for d in details:
            loc = list(d["loc"])
            index = loc.pop(0) if is_batch and loc and isinstance(loc[0], int) else None
            if loc and loc[0] in _STREAM_TAGS:
                loc.pop(0)
            field = ".".join(str(part) for part in loc) or None
            items.append(ErrorItem(index=index, field=field, reason=d["msg"]))
        if not is_batch and any(
            d["type"] in ("model_type", "model_attributes_type") for d in details
        ):
            return ApiError(
                422, "invalid_body", "the body must be a JSON object or an array of objects", items
            )
        return _invalid(items)

    def _out_of_time_range(self, readings: Sequence[R], is_batch: bool) -> list[ErrorItem]:
        now = datetime.now(UTC)
        latest = now + self.settings.max_future_skew
        oldest = now - self.settings.max_reading_age
        problems = []
        for index, reading in enumerate(readings):
            if reading.timestamp > latest:
                reason = f"more than {self.settings.max_future_skew} in the future"
            elif reading.timestamp < oldest:
                reason = f"older than the maximum age of {self.settings.max_reading_age}"
            else:
                continue
            problems.append(
                ErrorItem(index=index if is_batch else None, field="timestamp", reason=reason)
            )
        return problems


def _invalid(items: list[ErrorItem]) -> ApiError:
    count = len({i.index for i in items})
    noun = "reading is" if count == 1 else "readings are"
    return ApiError(422, "invalid_readings", f"{count} {noun} invalid; nothing was stored", items)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type:
        raise ApiError(415, "unsupported_media_type", "send the readings as application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body exceeds {limit} bytes; split the batch")

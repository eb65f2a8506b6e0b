"""From request bytes to validated readings, or a 4xx that names every bad item and field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from energy_engine.errors import ApiError, ErrorItem
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.settings import Settings

R = TypeVar("R", MeterReading, VehicleReading, MeterReading | VehicleReading)

_STREAM_TAGS = ("meter", "vehicle")

# History stores voltage, SoC and battery temperature as `real`, which refuses (instead of
# rounding to zero) a non-zero value this small; `energy-engine import` refuses it too.
_REAL_UNDERFLOW = 2.0**-150
_UNDERFLOW = "too small to store (below 1e-45); send 0"


def _sensor_values(reading: MeterReading | VehicleReading) -> list[tuple[str, float]]:
    if isinstance(reading, MeterReading):
        return [("voltage", reading.voltage)]
    return [("soc", reading.soc), ("batteryTemp", reading.battery_temp)]


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

    def parse(self, body: bytes | bytearray) -> list[R]:
        """All readings of a JSON body (one object or an array), or an ApiError naming every
        problem found."""
        is_batch = body.lstrip()[:1] == b"["
        try:
            readings = (
                self.batch.validate_json(body) if is_batch else [self.single.validate_json(body)]
            )
        except ValidationError as exc:
            raise self._rejection(exc, is_batch) from None
        problems = self.storable_problems(readings, is_batch)
        if problems:
            raise _invalid(problems)
        return readings

    def lines(self) -> NdjsonParser[R]:
        """A parser for an NDJSON body, fed chunk by chunk as it arrives."""
        return NdjsonParser(self)

    def _rejection(self, exc: ValidationError, is_batch: bool) -> ApiError:
        details = exc.errors(include_url=False, include_input=False)
        kinds = {d["type"] for d in details}
        if "json_invalid" in kinds:
            return ApiError(400, "malformed_json", details[0]["msg"])
        if is_batch and "too_long" in kinds:
            return _too_many(self.settings)
        if is_batch and "too_short" in kinds:
            return ApiError(422, "empty_batch", "the batch holds no readings")
        items = []
        for d in details:
            loc = list(d["loc"])
            index = loc.pop(0) if is_batch and loc and isinstance(loc[0], int) else None
            items.append(ErrorItem(index=index, field=_field(loc), reason=d["msg"]))
        if not is_batch and any(
            d["type"] in ("model_type", "model_attributes_type") for d in details
        ):
            return ApiError(
                422, "invalid_body", "the body must be a JSON object or an array of objects", items
            )
        return _invalid(items)

    def storable_problems(
        self, readings: Sequence[R], is_batch: bool, indexes: Sequence[int] | None = None
    ) -> list[ErrorItem]:
        """What validation cannot see: timestamps outside the accepted range (relative to
        now) and sensor values too small for their `real` column."""
        now = datetime.now(UTC)
        latest = now + self.settings.max_future_skew
        oldest = now - self.settings.max_reading_age
        problems = []
        for position, reading in enumerate(readings):
            index = indexes[position] if indexes is not None else position
            if reading.timestamp > latest:
                reason = f"more than {self.settings.max_future_skew} in the future"
            elif reading.timestamp < oldest:
                reason = f"older than the maximum age of {self.settings.max_reading_age}"
            else:
                continue
            problems.append(
                ErrorItem(index=index if is_batch else None, field="timestamp", reason=reason)
            )
        for position, reading in enumerate(readings):
            index = indexes[position] if indexes is not None else position
            problems.extend(
                ErrorItem(index=index if is_batch else None, field=field, reason=_UNDERFLOW)
                for field, value in _sensor_values(reading)
                if 0 < abs(value) <= _REAL_UNDERFLOW
            )
        return problems


class NdjsonParser(Generic[R]):
    """Validates an NDJSON body line by line while it streams in, so the whole body is never
    held in memory; an item's `index` in errors is its 0-based line number (blank lines are
    skipped but counted)."""

    def __init__(self, parser: ReadingParser[R]) -> None:
        self._parser: ReadingParser[R] = parser
        self._pending = b""
        self._line = 0
        self._readings: list[R] = []
        self._indexes: list[int] = []
        self._malformed: list[ErrorItem] = []
        self._invalid: list[ErrorItem] = []

    def feed(self, chunk: bytes) -> None:
        """Validate every line completed by `chunk`."""
        data = self._pending + chunk if self._pending else chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end])
            start = end + 1
        self._pending = data[start:]

    def close(self) -> list[R]:
        """All readings, or an ApiError naming every bad line."""
        if self._pending:
            self._take(self._pending)
            self._pending = b""
        if self._malformed:
            raise ApiError(400, "malformed_json", "lines are not valid JSON", self._malformed)
        problems = self._invalid or self._parser.storable_problems(
            self._readings, True, self._indexes
        )
        if problems:
            raise _invalid(problems)
        if not self._readings:
            raise ApiError(422, "empty_batch", "the body holds no readings")
        return self._readings

    def _take(self, line: bytes) -> None:
        index = self._line
        self._line += 1
        if not line.strip():
            return
        if len(self._indexes) >= self._parser.settings.max_batch_items:
            raise _too_many(self._parser.settings)
        try:
            self._readings.append(self._parser.single.validate_json(line))
            self._indexes.append(index)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_input=False)
            if any(d["type"] == "json_invalid" for d in details):
                self._malformed.append(ErrorItem(index=index, reason=details[0]["msg"]))
                return
            self._invalid.extend(
                ErrorItem(index=index, field=_field(list(d["loc"])), reason=d["msg"])
                for d in details
            )


def _field(loc: list[int | str]) -> str | None:
    if loc and loc[0] in _STREAM_TAGS:
        loc = loc[1:]
    return ".".join(str(part) for part in loc) or None


def _too_many(settings: Settings) -> ApiError:
    return ApiError(
        413,
        "batch_too_large",
        f"a batch holds at most {settings.max_batch_items} readings; split it",
    )


def _invalid(items: list[ErrorItem]) -> ApiError:
    count = len({i.index for i in items})
    noun = "reading is" if count == 1 else "readings are"
    return ApiError(422, "invalid_readings", f"{count} {noun} invalid; nothing was stored", items)

"""From request bytes to validated readings, or a 4xx that names every bad item and field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from energy_engine.bounds import duration_text, repeated_keys
from energy_engine.errors import ApiError, ErrorItem, reason_of
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.settings import Settings

R = TypeVar("R", MeterReading, VehicleReading, MeterReading | VehicleReading)

_STREAM_TAGS = ("meter", "vehicle")

# History stores voltage, SoC and battery temperature as `real`, which refuses (instead of
# rounding to zero) a non-zero value this small; `energy-engine import` refuses it too.
_REAL_UNDERFLOW = 2.0**-150
_UNDERFLOW = "too small to store (below 1e-45); send 0"


def _quotes(model: type[MeterReading | VehicleReading]) -> int:
    """How many `"` a valid reading of `model` holds in JSON, however it is spelt.

    Validation keeps the last of two equal keys, so `{"soc": 5, "soc": 90}` would pass. Every
    field is required and no value can hold a quote (ids are [A-Za-z0-9._:-], timestamps ISO
    text), so a valid reading has exactly two quotes per key and per string value; counting
    them (C speed, no second parse) tells whether any key came twice."""
    fields = model.model_fields.values()
    assert all(f.is_required() for f in fields), "the count assumes every field is required"
    strings = sum(1 for f in fields if f.annotation is not float)  # the id and the timestamp
    return 2 * len(fields) + 2 * strings


_QUOTES = {MeterReading: _quotes(MeterReading), VehicleReading: _quotes(VehicleReading)}


def _duplicate_keys(text: bytes | bytearray, is_batch: bool, line: int | None = None) -> ApiError:
    """The 422 naming each repeated key; only called once the quote count says there is one.
    Valid readings are flat objects, so the n-th object decoded is the n-th item."""
    return _invalid(
        [
            ErrorItem(
                index=line if line is not None else position if is_batch else None,
                field=key,
                reason="the key appears twice",
            )
            for position, key in repeated_keys(text)
        ]
    )


def _sensor_values(reading: MeterReading | VehicleReading) -> list[tuple[str, float]]:
    if isinstance(reading, MeterReading):
        return [("voltage", reading.voltage)]
    return [("soc", reading.soc), ("batteryTemp", reading.battery_temp)]


def _underflow(readings: Sequence[MeterReading | VehicleReading]) -> bool:
    """Whether any sensor value is non-zero and too small for `real` (validation refuses NaN
    and infinities, so the smallest non-zero magnitude decides)."""
    meters = [r for r in readings if isinstance(r, MeterReading)]
    vehicles = [r for r in readings if isinstance(r, VehicleReading)]
    values = [r.voltage for r in meters] + [r.soc for r in vehicles]
    values += [r.battery_temp for r in vehicles]
    return min(filter(None, map(abs, values)), default=1.0) <= _REAL_UNDERFLOW


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
        if body.count(b'"') != sum(_QUOTES[type(r)] for r in readings):
            raise _duplicate_keys(body, is_batch)
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
            items.append(ErrorItem(index=index, field=_field(loc), reason=reason_of(d)))
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
        # Nearly every request has no such problem: that is checked with C-level min and max
        # (a third of the per-item loops' cost); the loops below then name what is wrong.
        stamps = [reading.timestamp for reading in readings]
        if stamps and oldest <= min(stamps) and max(stamps) <= latest and not _underflow(readings):
            return []
        problems = []
        for position, reading in enumerate(readings):
            index = indexes[position] if indexes is not None else position
            if reading.timestamp > latest:
                reason = f"more than {duration_text(self.settings.max_future_skew)} in the future"
            elif reading.timestamp < oldest:
                reason = (
                    f"older than the maximum age of {duration_text(self.settings.max_reading_age)}"
                )
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

    @property
    def indexes(self) -> list[int]:
        """The line number of each reading `close` returned."""
        return self._indexes

    def _take(self, line: bytes) -> None:
        index = self._line
        self._line += 1
        if not line.strip():
            return
        if len(self._indexes) >= self._parser.settings.max_batch_items:
            raise _too_many(self._parser.settings)
        try:
            reading = self._parser.single.validate_json(line)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_input=False)
            if any(d["type"] == "json_invalid" for d in details):
                self._malformed.append(ErrorItem(index=index, reason=details[0]["msg"]))
                return
            self._invalid.extend(
                ErrorItem(index=index, field=_field(list(d["loc"])), reason=reason_of(d))
                for d in details
            )
            return
        if line.count(b'"') != _QUOTES[type(reading)]:
            self._invalid.extend(_duplicate_keys(line, True, index).body.errors)
            return
        self._readings.append(reading)
        self._indexes.append(index)


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
